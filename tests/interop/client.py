"""An independent Cap'n Proto client for cartwheel, written from schema/cartwheel.capnp alone.

It uses pycapnp (the C++ Cap'n Proto library), none of cartwheel's Rust code, to show that the
schema is a usable contract. Run it against a node: `python3 client.py HOST:PORT`. It prints
one line per check and exits non-zero on the first failure.
"""

import asyncio
import os
import sys

import capnp

HERE = os.path.dirname(os.path.abspath(__file__))
schema = capnp.load(os.path.join(HERE, "..", "..", "schema", "cartwheel.capnp"))


def check(condition, what):
    if not condition:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


async def main(address):
    host, port = address.rsplit(":", 1)
    stream = await capnp.AsyncIoStream.create_connection(host=host, port=int(port))
    client = capnp.TwoPartyClient(stream)
    node = client.bootstrap().cast_as(schema.Cartwheel)

    result = (await node.get(bucket="default", key=b"interop-key")).result
    check(result.which() == "notFound", "a fresh key is not found")

    put = (await node.put(bucket="default", key=b"interop-key", value=b"from python",
                          context=b"")).result
    check(put.which() == "ok" and len(put.ok.context) > 0, "put is acknowledged with a context")

    got = (await node.get(bucket="default", key=b"interop-key")).result
    check(got.which() == "found", "the key is found after put")
    check(list(got.found.siblings) == [b"from python"], "get returns the value put")

    big = (await node.put(bucket="default", key=b"big", value=b"x" * ((1 << 20) + 1),
                          context=b"")).result
    check(big.which() == "error" and big.error.kind == "valueTooLarge",
          "an oversized value gets the typed valueTooLarge error")

    unknown = (await node.get(bucket="no-such-bucket", key=b"k")).result
    check(unknown.which() == "error" and unknown.error.kind == "unknownBucket",
          "an unknown bucket gets the typed unknownBucket error")

    again = (await node.get(bucket="default", key=b"interop-key")).result
    check(again.which() == "found", "the node keeps serving after refused requests")

    status = (await node.status()).status
    check(status.nodeId == "n1" and len(status.buckets) >= 1, "status names the node and buckets")


if __name__ == "__main__":
    asyncio.run(capnp.run(main(sys.argv[1])))
