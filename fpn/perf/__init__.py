"""Everything that times or profiles: ``fpn bench`` (training steps, inference, batch-1 latency, the data
loader, COCO evaluation), the same-weights models it compares, the bench images, host-sync counting and the CUDA
profile. Nothing in the library imports this package; it sits on top of it."""
