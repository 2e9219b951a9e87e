"""Spark layer: session construction and pure DataFrame -> DataFrame transforms."""
