"""Load benchmarks for the zchat broker: `python -m benchmarks.run [--quick]`.

Everything runs on 127.0.0.1 only: a real `zchat broker` process (or the raw
pyzmq forwarder in ceiling.py, the ceiling every figure is compared with) and
load processes that speak the wire protocol with raw pyzmq sockets.
"""
