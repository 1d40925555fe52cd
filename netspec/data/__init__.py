"""Datasets for netspec: spec models, loaders, augmentation and downloads.

Public surface::

    from netspec.data import DataSpec, AugmentSpec, load_data, augment, Dataset, fetch

``DataSpec`` is the spec's ``train.data`` section (a union on ``source``:
mnist-5k, mnist, fashion-mnist, digits, inline, npz, function);
``load_data(spec)`` returns a ``Dataset`` of numpy arrays.

The default source, ``mnist-5k``, ships inside the package: 5,000 MNIST digits
(4,000 train / 1,000 test). MNIST is by Yann LeCun and Corinna Cortes and is
licensed CC BY-SA 3.0; see ``netspec/data/MNIST_LICENSE.txt``.
"""

from netspec.data.augment import augment
from netspec.data.fetch import fetch
from netspec.data.idx import read_idx, write_idx
from netspec.data.sources import Dataset, load_data
from netspec.data.spec import SOURCES, AugmentSpec, DataSpec, data_spec_adapter

__all__ = [
    "AugmentSpec",
    "DataSpec",
    "Dataset",
    "SOURCES",
    "augment",
    "data_spec_adapter",
    "fetch",
    "load_data",
    "read_idx",
    "write_idx",
]
