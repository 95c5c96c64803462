"""The stub process of one Python model instance, as Triton runs it:
`python -m llmserve.backends.python.stub_main --fd N` with the socket to the server on N.

The model's version folder and model folder join sys.path and model.py is imported as
`<version>.model`, as Triton's stub does; `triton_python_backend_utils` is the stub's
pb_utils. The main thread runs initialize; then two threads serve: one reads the
server's messages while the other runs an execute (async models: on their event loop),
so cancellation, BLS responses and replies arrive while execute runs. When the server
goes away (end of file), the stub exits.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from llmserve.backends.python.stub_channel import Channel, ChannelClosed


def main() -> None:
    parser = argparse.ArgumentParser(prog="llmserve-python-stub")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--name", default="")
    args = parser.parse_args()
    channel = Channel(socket.socket(fileno=args.fd))
    if sys.version_info < (3, 10):  # noqa: UP036 (the stub may run in another environment)
        channel.send(("fatal", f"the stub needs Python 3.10 or newer; {sys.executable} is "
                               f"{sys.version.split()[0]}"))
        sys.exit(1)
    # the server's working directory (python -m puts it first) is no import root of a model
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path.pop(0)
    try:
        from llmserve.backends.python.stub_loop import Stub
    except Exception as exc:  # e.g. numpy missing from the model's execution environment
        channel.send(("fatal", f"the stub cannot start with {sys.executable}: "
                               f"{type(exc).__name__}: {exc}"))
        sys.exit(1)
    channel.send(("hello", os.getpid(), list(sys.version_info[:3]), sys.executable, sys.prefix))
    try:
        message = channel.recv()
    except ChannelClosed:
        sys.exit(0)
    Stub(channel, message[1], args.name).run()


if __name__ == "__main__":
    main()
