"""An independent Cap'n Proto client for cartwheel, written from schema/cartwheel.capnp alone.

It uses pycapnp (the C++ Cap'n Proto library) and Python's own TLS, none of cartwheel's Rust
code, to show that the schema is a usable contract. Run it against a node:
`python3 client.py HOST:PORT CREDENTIALS` (the credentials file `up` writes: a token line,
then the cluster CA's certificate). It prints one line per check and exits non-zero on the
first failure.
"""

import asyncio
import os
import ssl
import sys

import capnp

HERE = os.path.dirname(os.path.abspath(__file__))
schema = capnp.load(os.path.join(HERE, "..", "..", "schema", "cartwheel.capnp"))


def check(condition, what):
    if not condition:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def read_credentials(path):
    """The token and the CA certificate (PEM) of a credentials file."""
    token, pem, in_pem = None, [], False
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("-----BEGIN"):
                in_pem = True
            if in_pem:
                pem.append(line)
            elif line and not line.startswith("#"):
                token = line
            if line.startswith("-----END"):
                in_pem = False
    return token, "\n".join(pem) + "\n"


async def connect(host, port, ca):
    tls = ssl.create_default_context(cadata=ca)
    tls.minimum_version = ssl.TLSVersion.TLSv1_3
    stream = await capnp.AsyncIoStream.create_connection(
        host=host, port=int(port), ssl=tls, server_hostname="cartwheel")
    return capnp.TwoPartyClient(stream).bootstrap().cast_as(schema.Gate)


async def main(address, credentials):
    host, port = address.rsplit(":", 1)
    token, ca = read_credentials(credentials)

    gate = await connect(host, port, ca)
    refused = await gate.login(token="cw1.00.00")
    check(refused.error.kind == "unauthorized", "a bad token is refused as unauthorized")
    peer = await gate.peer(**{"from": "python"})
    check(peer.error.kind == "unauthorized",
          "the node-to-node API is refused to a connection without a member certificate")

    login = await gate.login(token=token)
    check(not login._has("error"), "the token from the credentials file logs in")
    node = login.node

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
    asyncio.run(capnp.run(main(sys.argv[1], sys.argv[2])))
