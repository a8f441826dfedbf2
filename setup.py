"""Builds the one C helper, ``shards/_jpegturbo`` (see shards/jpegturbo.py); everything else is
in pyproject.toml. The extension is optional: without the libjpeg headers the build goes on,
and the package keeps its OpenCV paths."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shards._jpegturbo",
            sources=["shards/_jpegturbo.c"],
            libraries=["jpeg"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
