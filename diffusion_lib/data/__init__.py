"""Data layer: sources (bundled, torchvision, folders, arrays) -> clean, cached ImageDataset.

    from diffusion_lib.data import load_dataset
    ds = load_dataset("digits", image_size=16)
    images, labels = ds.get_batch(torch.arange(64))   # float32 (64, 1, 16, 16) in [-1, 1]

Modules: dataset (ImageDataset, SourceInfo), sources (registry, bundled, folders, .npy),
torchvision_sources (downloads that fail fast), prepare (cleaning, conversion, split, cache),
analysis (per-image tables, summaries, plots; imported on demand: it loads matplotlib).
"""

from .dataset import ImageDataset, SourceInfo
from .prepare import clean_folder, process_files, scan_folder, split_dataset, to_channels, crop_box, resize_pixels
from .sources import available_sources, gallery_images, load_dataset, register_source, write_demo_folder
from .torchvision_sources import DatasetUnavailableError, default_root, raw_image_folder

__all__ = [
    "ImageDataset", "SourceInfo", "DatasetUnavailableError", "load_dataset", "register_source", "available_sources",
    "default_root", "gallery_images", "write_demo_folder", "raw_image_folder",
    "clean_folder", "scan_folder", "process_files", "split_dataset", "to_channels", "crop_box", "resize_pixels",
]
