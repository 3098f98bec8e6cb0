# The cartwheel wire contract: the client API and the node-to-node API.
#
# Rules for changing this file (Cap'n Proto's own evolution rules, restated):
# - never renumber, retype or remove a field, method or enumerant; only add new ones at the end;
# - a new union member, enumerant or method must be handled by old peers as "unknown" (old
#   servers answer an unknown method with an RPC "unimplemented" exception; old clients see an
#   unknown ErrorKind as `badRequest`-like and must treat it as "give up");
# - the generated Rust code in src/generated/ is committed and checked against this file in CI
#   (see README, "The wire schema").
#
# Conventions:
# - every call names its bucket as Text and its key as Data (raw bytes, at most the node's
#   key limit, 1 KiB by default);
# - numeric options use 0 for "the bucket's default";
# - failures a client must tell apart come back as a typed `Error` inside the result union, not
#   as RPC exceptions; an RPC exception means the transport or the peer itself failed, and for a
#   write the outcome is then unknown.

@0x97ae422df5656ba4;

# ---------------------------------------------------------------------------------------------
# Shared structures

struct ReadOptions {
  r @0 :UInt8;            # replicas that must answer; 0 = bucket default
  timeoutMs @1 :UInt32;   # 0 = node default
}

struct WriteOptions {
  w @0 :UInt8;            # replicas that must store the write; 0 = bucket default
  dw @1 :UInt8;           # of those, replicas that must have synced it; 0 = bucket default
  timeoutMs @2 :UInt32;   # 0 = node default
  returnBody @3 :Bool;    # answer with the value(s) after the write
  dwNone @4 :Bool;        # force dw = 0 for this request (0 in `dw` means "default")
  forwarded @5 :Bool;     # set by a node that forwards the write to a replica: never forward again
}

enum ErrorKind {
  badRequest @0;          # malformed request (empty key, bad context, ...): fix the request
  unknownBucket @1;       # no bucket of that name: fix the request
  wrongOperation @2;      # the operation does not fit the bucket's resolver: fix the request
  keyTooLarge @3;         # key over the node's key limit: fix the request
  valueTooLarge @4;       # value over the node's value limit: fix the request
  tooManySiblings @5;     # the key's sibling count is at the hard limit: read, resolve, write back
  quorumNotMet @6;        # too few replicas answered; a write's outcome is unknown: retry later
  timeout @7;             # the request timed out; a write's outcome is unknown: retry later
  overloaded @8;          # too many requests in flight; nothing was done: back off and retry
  internal @9;            # the node failed (I/O error, corrupt state): give up, report
  unauthorized @10;       # no valid credentials (bad or revoked token, not a member): log in
  forbidden @11;          # the credentials hold no grant for this: ask for one
  overflow @12;           # a counter or quantity would pass the 64-bit range: nothing stored
  unavailable @13;        # the node's storage failed (a full disk): nothing was done; retry,
                          # another node may take it
}

struct Error {
  kind @0 :ErrorKind;
  message @1 :Text;       # one line for a person; never parse it
}

struct CartItem {
  item @0 :Data;
  quantity @1 :Int64;
}

# What a client sees of a key: the sibling values of a `siblings` or `lww` bucket, or the value
# of a CRDT bucket, plus the opaque causal context to send back with the next write.
struct Value {
  context @0 :Data;
  union {
    siblings @1 :List(Data);   # lww: exactly one; siblings: one or more concurrent values
    counter @2 :Int64;         # pncounter
    set @3 :List(Data);        # orset: members in byte order
    cart @4 :List(CartItem);   # cart: items in byte order with their quantities
  }
}

# A CRDT operation for `update`.
struct Op {
  union {
    counterIncrement @0 :Int64;   # pncounter; negative = decrement
    setAdd @1 :Data;              # orset
    setRemove @2 :Data;           # orset; removes only what the context observed
    cartAdd @3 :CartItem;         # cart: add quantity (> 0) of an item
    cartRemove @4 :Data;          # cart: remove an item (observed quantities only)
    cartSetQuantity @5 :CartItem; # cart: set an item's quantity (0 removes it); concurrent
                                  # sets read the largest, adds concurrent with it count on top
    cartClear @6 :Void;           # cart: remove every item the context observed
    setClear @7 :Void;            # orset: remove every element the context observed
    counterReset @8 :Void;        # pncounter: take off what the context observed (0 if it saw all)
  }
}

struct GetResult {
  union {
    notFound @0 :Data;     # no value; the Data is the context of a tombstone, if any (may be empty)
    found @1 :Value;
    error @2 :Error;
  }
}

struct WriteResult {
  union {
    ok @0 :WriteOk;
    error @1 :Error;
  }
}

struct WriteOk {
  context @0 :Data;       # the causal context after the write
  value @1 :Value;        # set only when `returnBody` was asked and the key is not deleted
}

# ---------------------------------------------------------------------------------------------
# Cluster description

enum NodeState {
  up @0;
  suspect @1;
  down @2;
  joining @3;    # gets partitions in the ring change in flight
  leaving @4;    # hands its partitions off in the ring change in flight
  left @5;       # left the ring (leave, replace, remove): owns nothing; can be stopped
}

struct NodeInfo {
  id @0 :Text;
  address @1 :Text;       # host:port of its client API
  state @2 :NodeState;    # as the answering node sees it
  partitionsOwned @3 :UInt32;
  hintsQueued @4 :UInt64; # hints the answering node holds for this member
  dataBytes @5 :UInt64;   # live bytes the member stores, all buckets (gossiped; status only)
}

struct Ring {
  partitionCount @0 :UInt32;     # Q, a power of two
  nodes @1 :List(NodeInfo);      # every owner, of this ring and of the next
  owners @2 :List(UInt16);       # owners[p] = index into `nodes` of partition p's owner
  epoch @3 :UInt64;              # changes whenever ownership changes
  next @4 :RingTransition;       # a committed change on its way (unset: none)
  left @5 :List(Text);           # members that left: given nothing until joined anew
}

# A committed ownership change, moving partition by partition (DESIGN "Membership changes").
struct RingTransition {
  id @0 :UInt64;                 # the ring epoch that committed it
  owners @1 :List(UInt16);       # the next ring's owners, indexes into Ring.nodes
  moved @2 :List(UInt16);        # partitions whose replicas are the next ring's already
  removed @3 :List(Text);        # members forced out: no data is taken from them
}

struct BucketInfo {
  name @0 :Text;
  engine @1 :Text;
  resolver @2 :Text;
  n @3 :UInt8;
  r @4 :UInt8;
  w @5 :UInt8;
  dw @6 :UInt8;
  entries @7 :UInt64;      # entries in this node's engine for the bucket
  liveBytes @8 :UInt64;
  deadBytes @9 :UInt64;
  memoryBytes @10 :UInt64;
  durable @11 :Bool;       # whether the engine survives a restart
  siblingWarnings @12 :UInt64;  # client writes that left a key at the soft sibling limit
}

struct Status {
  nodeId @0 :Text;
  address @1 :Text;
  version @2 :Text;
  members @3 :List(NodeInfo);
  buckets @4 :List(BucketInfo);
  uptimeMs @5 :UInt64;
  requestsServed @6 :UInt64;
  requestsRefused @7 :UInt64;    # refused as overloaded
  connections @8 :UInt32;
  configDigest @9 :Data;         # digest of the bucket configuration, compared by gossip
  ringEpoch @10 :UInt64;
  configMismatches @11 :List(Text);  # members whose bucket configuration differs
  hintsRefused @12 :UInt64;      # hinted writes refused at the hint store's bounds
  statesRefused @13 :UInt64;     # replicated states refused (timestamp past the clock offset)
  connectionsUnauthenticated @14 :UInt32;  # of `connections`, those not yet logged in
  security @15 :Text;            # "tls" or "insecure"
  claimant @16 :Text;            # the member that commits ring changes, as this node sees it
  transfers @17 :Transfers;      # the ring change in flight, and this node's part in it
  partitions @18 :UInt32;        # Q
  antiEntropy @19 :AntiEntropyStatus;
}

# Anti-entropy on one node since it started.
struct AntiEntropyStatus {
  exchanges @0 :UInt64;          # partitions compared with another replica
  keysReceived @1 :UInt64;       # keys repaired here from the other replica
  keysSent @2 :UInt64;           # keys repaired at the other replica
  lastExchangeMsAgo @3 :UInt64;  # since the last comparison (0: none yet)
  tombstonesCollected @4 :UInt64;  # deletes whose storage this node reclaimed
  lateStatesDropped @5 :UInt64;  # states older than a collected tombstone, dropped
}

# A ring change in flight (DESIGN "Membership changes"), as one node sees it.
struct Transfers {
  transition @0 :UInt64;         # its id (the epoch that committed it); 0: none in flight
  moving @1 :UInt32;             # partitions of the ring not moved yet
  receiving @2 :UInt32;          # partitions this node takes over
  held @3 :UInt32;               # of those, copied and verified
  running @4 :List(UInt16);      # being copied now
  segmentsCopied @5 :UInt64;     # hash-tree segments exchanged by this node's copies
  elapsedMs @6 :UInt64;          # since this node's first copy in it
  waiting @7 :Text;              # why a copy waits (a source down), if one does
  keysCopied @8 :UInt64;         # entries this node's copies received
  bytesCopied @9 :UInt64;        # and their bytes
}

# A membership change request (admin): staged on the claimant, applied by `commit`.
struct ClusterRequest {
  union {
    join @0 :Text;               # a member that owns nothing gets its share
    leave @1 :Text;              # a member hands its partitions to the others
    replace :group {             # `new` takes exactly `old`'s partitions
      old @2 :Text;
      new @3 :Text;
    }
    remove @4 :Text;             # a member gone for good: rebuilt from the other replicas
    plan @5 :Void;               # what a commit would do
    commit @6 :Void;             # begin the ring change
    cancel @7 :Void;             # drop the staged changes
  }
}

struct PartitionMove {
  partition @0 :UInt16;
  from @1 :Text;
  to @2 :Text;
}

struct ClusterAnswer {
  claimant @0 :Text;             # the node that answered
  staged @1 :List(Text);         # the staged changes ("leave n4", ...)
  moves @2 :List(PartitionMove); # partitions whose owner the plan changes
  bytesPerPartition @3 :UInt64;  # data per partition, estimated from the claimant's copy
  keysPerPartition @4 :UInt64;
  ringEpoch @5 :UInt64;
  moving @6 :UInt32;             # partitions of the ring change in flight not moved yet
}

# ---------------------------------------------------------------------------------------------
# The bootstrap capability of every node: it can only authenticate (see DESIGN, "Trust").

interface Gate {
  # A client logs in with a token; `node` is the client API scoped to the token's grants.
  # A bad or revoked token answers `unauthorized` and no capability.
  login @0 (token :Text) -> (node :Cartwheel, error :Error);
  # A member opens the node-to-node API. Answered only on a connection whose TLS client
  # certificate was signed by the cluster's CA (any connection in insecure mode); otherwise
  # `unauthorized` and no capability. `from` names the asking node.
  peer @1 (from :Text) -> (peer :Peer, error :Error);
}

# ---------------------------------------------------------------------------------------------
# The client API, as `Gate.login` returns it: every method checks the token's grants
# (read: get; write: put, delete, update; admin: ring, status, tokens) and answers `forbidden`
# when they are missing, or `unauthorized` once the token was revoked.

interface Cartwheel {
  get @0 (bucket :Text, key :Data, options :ReadOptions) -> (result :GetResult);
  put @1 (bucket :Text, key :Data, value :Data, context :Data, options :WriteOptions)
      -> (result :WriteResult);
  delete @2 (bucket :Text, key :Data, context :Data, options :WriteOptions)
      -> (result :WriteResult);
  update @3 (bucket :Text, key :Data, ops :List(Op), context :Data, options :WriteOptions)
      -> (result :WriteResult);
  ring @4 () -> (ring :Ring, error :Error);        # admin; on `error`, no ring
  status @5 () -> (status :Status, error :Error);  # admin; on `error`, no status

  # Kept for the numbering: always fails. The node-to-node API is `Gate.peer`.
  peer @6 (from :Text) -> (peer :Peer);
  # Admin: mint a token with `grants` ("BUCKET=RIGHTS,..." with RIGHTS of r, w; "admin" for
  # the admin grant; "*" for every bucket), signed with the cluster's token key.
  createToken @7 (grants :Text) -> (token :Text, id :Text, error :Error);
  # Admin: revoke the token with this id on every node (spread by gossip, kept across restarts).
  revokeToken @8 (id :Text) -> (error :Error);
  # Admin: stage, plan, commit or cancel membership changes. The claimant answers; another
  # node passes the request on to it.
  cluster @9 (request :ClusterRequest) -> (answer :ClusterAnswer, error :Error);
}

# ---------------------------------------------------------------------------------------------
# The node-to-node API. States are resolver states: opaque bytes that carry their own type tag.

struct ReplicaResult {
  union {
    stored @0 :Bool;        # true once stored (and synced, when the request asked)
    error @1 :Error;
  }
}

struct FetchResult {
  union {
    notFound @0 :Void;
    state @1 :Data;
    error @2 :Error;
  }
}

# One member in a gossiped view.
struct Member {
  id @0 :Text;
  address @1 :Text;
  incarnation @2 :UInt64;    # bumped by the node itself at each start
  heartbeat @3 :UInt64;      # bumped by the node itself every gossip round
  leaving @4 :Bool;          # the member asked to leave the ring
  configDigest @5 :Data;     # digest of the member's bucket configuration
  holdsFor @6 :UInt64;       # the ring transition `holds` is about (0: none)
  holds @7 :List(UInt16);    # partitions of that transition the member copied and verified
  dataBytes @8 :UInt64;      # live bytes the member stores, all buckets (as it last said)
}

# What a node knows of the cluster, exchanged by gossip.
struct View {
  members @0 :List(Member);
  ring @1 :Ring;             # the ownership with the highest epoch the sender knows
  revokedTokens @2 :List(Text);  # ids of revoked client tokens (a grow-only set)
}

interface Peer {
  # Merge `state` into the replica's state for the key and store the result. With `hintFor`
  # set, the receiver is a fallback: it keeps the state as a hint for that node (sloppy
  # quorum) and delivers it when the node is back.
  replicate @0 (bucket :Text, key :Data, state :Data, sync :Bool, hintFor :Text)
      -> (result :ReplicaResult);
  # Read the replica's state for the key, as stored (merged with any hint it holds for it).
  fetch @1 (bucket :Text, key :Data) -> (result :FetchResult);
  # Exchange views: the receiver merges the sender's view and answers with its own. A refused
  # call (malformed, over the connection's in-flight bound) answers `error` and no view.
  gossip @2 (view :View) -> (view :View, error :Error);
  # Anti-entropy: the receiver's hash tree leaves for one partition of a bucket, one 64-bit
  # hash per key segment (see src/cluster/anti_entropy.rs for how they are computed).
  # On a refusal (unknown bucket, over the in-flight bound) `error` is set and nothing else.
  treeLeaves @3 (bucket :Text, partition :UInt16) -> (leaves :List(UInt64), error :Error);
  # Anti-entropy: the receiver's (key, state) pairs in the given segments of a partition.
  # On a refusal `error` is set and nothing else.
  segmentEntries @4 (bucket :Text, partition :UInt16, segments :List(UInt16))
      -> (entries :List(Entry), error :Error);
  # The client API with every grant, for a member that forwards a client's write.
  node @5 () -> (node :Cartwheel);
  # Several `replicate` and `fetch` calls in one message: what a node has for this peer in one
  # scheduler turn travels together (src/cluster/peers.rs, "Batches"). Each call is admitted,
  # done and answered as its single form would be; `answers` has one entry per call, in
  # order. The whole batch is refused (`error` set, no answers) only when it is malformed.
  batch @6 (calls :List(PeerCall)) -> (answers :List(PeerAnswer), error :Error);
}

# One call of a `Peer.batch`: the parameters of `replicate` or of `fetch`.
struct PeerCall {
  union {
    replicate :group {
      bucket @0 :Text;
      key @1 :Data;
      state @2 :Data;
      sync @3 :Bool;
      hintFor @4 :Text;
    }
    fetch :group {
      bucket @5 :Text;
      key @6 :Data;
    }
  }
}

# The answer to one call of a `Peer.batch`, as its single form answers it.
struct PeerAnswer {
  union {
    replicate @0 :ReplicaResult;
    fetch @1 :FetchResult;
  }
}

struct Entry {
  key @0 :Data;
  state @1 :Data;
}
