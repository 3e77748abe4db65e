"""A tiny bundled model and synthetic data set for trying class activation maps offline.

Example:
    >>> from camlens.demo import CLASSES, load_model, make_dataset
    >>> images, labels, masks = make_dataset(8, seed=1)
    >>> model = load_model()  # DemoNet, eval mode, CPU
    >>> images.shape, labels.shape, masks.shape
    (torch.Size([8, 3, 96, 96]), torch.Size([8]), torch.Size([8, 96, 96]))
    >>> bool((model(images).argmax(1) == labels).all())  # it classifies these correctly
    True
"""

from camlens.demo.data import CLASSES, make_dataset
from camlens.demo.model import WEIGHTS_PATH, DemoNet, load_model

__all__ = ["CLASSES", "WEIGHTS_PATH", "DemoNet", "load_model", "make_dataset"]
