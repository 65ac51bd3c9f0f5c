"""How every model sees its first frame: uint8 -> x / IMAGE_DIVIDE - IMAGE_SUBTRACT in [-1, 1], NCHW.

The torch pipeline applies it (`dvdm.pipeline.image_to_tensor`), the export writes it into the manifest's
`image` block, and the ONNX pipeline applies what the manifest says.
"""

IMAGE_DIVIDE, IMAGE_SUBTRACT = 127.5, 1.0
