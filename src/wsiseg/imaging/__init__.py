"""Image and mask processing on arrays: tissue detection, stain handling, instance splitting, post-processing,
vectorisation to polygons, and the figures a person looks at."""
