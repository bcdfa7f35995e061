"""The CI set: the architectures every export path is held to in the tests, each with its target layer (a module
name; what `--layer auto` picks for the PyTorch exporter)."""

ZOO = {
    "torchvision:resnet18": "layer4",
    "torchvision:resnet50": "layer4",
    "torchvision:vgg11": "features",
    "torchvision:densenet121": "features",
    "torchvision:mobilenet_v3_small": "features",
    "torchvision:efficientnet_b0": "features",
    "torchvision:convnext_tiny": "features",
    "torchvision:regnet_y_400mf": "trunk_output",
    "efficientnet-lite0": "_swish",
}
