"""The dataset registry: the paper's seven datasets in its column order, their titles and sizes, and the options
of loading (standardisation modes, sources). One owner for each: the figures' columns, the parameter check, the
plan and the loaders read them here.
"""

DATASETS = ("mnist", "fashionmnist", "svhn", "cifar10", "cifar100", "stl10", "imagenet")  # the paper's column order
TITLES = {"mnist": "MNIST", "fashionmnist": "FashionMNIST", "svhn": "SVHN", "cifar10": "CIFAR10",
          "cifar100": "CIFAR100", "stl10": "STL10", "imagenet": "ImageNet", "demo": "MNIST (demo)"}
COLUMN = {"demo": "mnist"}  # a dataset that is not one of the paper's draws in the column of the one it samples
# as torchvision ships them: (train images, test images, classes, channels, native size); nc.runs.plan reads these
SIZES = {"mnist": (60000, 10000, 10, 1, 28), "fashionmnist": (60000, 10000, 10, 1, 28),
         "svhn": (73257, 26032, 10, 3, 32), "cifar10": (50000, 10000, 10, 3, 32),
         "cifar100": (50000, 10000, 100, 3, 32), "stl10": (5000, 8000, 10, 3, 96),
         "imagenet": (1281167, 50000, 1000, 3, 224), "demo": (4000, 1000, 10, 1, 28)}
NPZ_FILES = {name: f"{name}.npz" for name in DATASETS}
MIN_STD = 1e-6  # standardize="pixel": pixels with a smaller train SD are divided by 1, not by their SD
IMAGENET_IMAGE_SIZE = 32  # ImageNet from an ImageFolder is decoded at this size unless image_size says otherwise
STANDARDIZE = ("channel", "pixel")
SOURCES = ("auto", "torchvision", "npz", "store")


def column_of(dataset: str) -> str:
    """The paper's figure column a dataset belongs to (the demo is real MNIST)."""
    return COLUMN.get(dataset, dataset)
