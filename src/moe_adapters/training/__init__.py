"""Training: one task's experts and router (task), one DDAS autoencoder (autoencoder), the mini benchmark's
tiny CLIP (pretrain); resumable loops (loop) and the reference's schedules (schedules)."""
