"""Annotation sources (RLE tables, GeoJSON/Aperio polygons, mask images and folders) rasterised onto a slide's grid."""
