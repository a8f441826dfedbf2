"""The GPU path: byte batches built in the workers, decoded and normalised on the device
(docs/architecture.md, "Device decode")."""

from loader.device.bytebatch import ByteBatch
from loader.device.decoder import DeviceDecoder
from loader.device.prefetcher import DeviceBatch, DevicePrefetcher, resolve_device

__all__ = ["ByteBatch", "DeviceBatch", "DeviceDecoder", "DevicePrefetcher", "resolve_device"]
