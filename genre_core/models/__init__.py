"""Networks: the model zoo, custom layers, pretrained backbones, the ncnn feature engine and feature cache."""
