"""A real SMTP server for the tests (aiosmtpd): writes each message it accepts to DIR as
NNNN.eml (written whole, then renamed), and refuses the recipients given with --refuse (550).
Prints "listening" once it accepts connections; runs until killed."""
import argparse
import asyncio
import os
import signal

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, directory, refused):
        self.directory = directory
        self.refused = {address.lower() for address in refused}
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.refused:
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        path = os.path.join(self.directory, "%04d.eml" % self.count)
        with open(path + ".part", "wb") as f:
            f.write(b"X-Envelope-To: " + ", ".join(envelope.rcpt_tos).encode() + b"\r\n")
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".part", path)
        return "250 2.0.0 accepted"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--refuse", action="append", default=[])
    args = parser.parse_args()
    controller = Controller(Handler(args.dir, args.refuse), hostname="127.0.0.1", port=args.port)
    controller.start()
    print("listening", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()


if __name__ == "__main__":
    main()
