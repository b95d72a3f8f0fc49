"""The paper's datasets (11 MTIL datasets and TinyImageNet; CIFAR100 also serves class-incremental runs): pinned
facts, fetching and verification, torchvision readers, splits, decoding, and preparation."""

from .decode import DecodeError
from .fetch import check_all
from .pins import ChecksumError, DatasetSizeError, dataset_names, load_pins, raw_root
from .prepare import prepare_dataset
from .readers import open_source, torchvision_train_split
from .splits import few_shot_indices, index_digest, random_split_indices

__all__ = [
    "ChecksumError",
    "DatasetSizeError",
    "DecodeError",
    "check_all",
    "dataset_names",
    "few_shot_indices",
    "index_digest",
    "load_pins",
    "open_source",
    "prepare_dataset",
    "random_split_indices",
    "raw_root",
    "torchvision_train_split",
]
