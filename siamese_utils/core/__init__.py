"""The teaching core: what chapters 01-04 teach, importing nothing outside itself. See ``siamese_utils``."""
