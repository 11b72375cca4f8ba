"""Chapter 09: image pipelines, training at scale, several processes, large-gallery search, a CLIP reference row."""
