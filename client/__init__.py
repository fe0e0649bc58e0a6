"""The zchat client library and its terminal front ends."""
