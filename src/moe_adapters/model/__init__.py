"""The model: CLIP with a MoE adapter in every block (moe: experts, routers, gating; clip: the MoECLIP wrapper
around open_clip) and the DDAS auto-selector (ddas: feature extractors, autoencoders, the routing decision).
Import the submodules: moe has no dependency but torch, so code that needs only the adapter's shape stays light."""
