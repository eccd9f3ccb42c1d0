"""The limits of what the readers accept, in a module that imports nothing (the config's defaults use them)."""

MAX_DECODED_PIXELS = 1_000_000_000  # PNG/JPEG decoded whole: 3 GB as 8-bit RGB, 8 GB as 16-bit RGBA
STREAM_SEGMENT_BYTES = 64 * 2**20  # larger deflate/uncompressed TIFF strips are decoded row by row
MAX_SEGMENT_BYTES = 512 * 2**20  # larger TIFF tiles/strips that cannot be streamed are rejected
