"""Compression of client uploads, with the exact size of each message."""

from fedjax_med.communication import compression as compression
