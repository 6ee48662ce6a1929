"""Data: raw sources (torchvision sets, class folders), prepared tensors, toy sets, augmentation."""
