"""vLLM KV-cache events in the data layer: one import for the three parts.

- ``kvgate.datalayer.kvwire``: the wire format (frames, msgpack batches, kvgate's one set of KV-event
  types, shared with the simulator), decoding and encoding;
- ``kvgate.datalayer.kvindex``: the bounded global block index (and kvgate's token keys);
- ``kvgate.datalayer.kvsubscriber``: ZMQ subscribers with replay, the manager, and ``KVEventSources``
  (started by the front door beside the metrics scraper).
"""

from __future__ import annotations

from kvgate.datalayer.kvindex import TOKENS_SEED as TOKENS_SEED
from kvgate.datalayer.kvindex import BlockIndex as BlockIndex
from kvgate.datalayer.kvindex import IndexStats as IndexStats
from kvgate.datalayer.kvindex import token_block_key as token_block_key
from kvgate.datalayer.kvindex import token_keys as token_keys
from kvgate.datalayer.kvsubscriber import EventSourceResolver as EventSourceResolver
from kvgate.datalayer.kvsubscriber import KVEventsManager as KVEventsManager
from kvgate.datalayer.kvsubscriber import KVEventSources as KVEventSources
from kvgate.datalayer.kvsubscriber import KVEventSubscriber as KVEventSubscriber
from kvgate.datalayer.kvsubscriber import SubscriberStats as SubscriberStats
from kvgate.datalayer.kvwire import END_SEQ as END_SEQ
from kvgate.datalayer.kvwire import AllBlocksCleared as AllBlocksCleared
from kvgate.datalayer.kvwire import BlockRemoved as BlockRemoved
from kvgate.datalayer.kvwire import BlockStored as BlockStored
from kvgate.datalayer.kvwire import DecodeError as DecodeError
from kvgate.datalayer.kvwire import EventBatch as EventBatch
from kvgate.datalayer.kvwire import KeyMode as KeyMode
from kvgate.datalayer.kvwire import KVEvent as KVEvent
from kvgate.datalayer.kvwire import decode_batch as decode_batch
from kvgate.datalayer.kvwire import encode_batch as encode_batch
from kvgate.datalayer.kvwire import event_to_wire as event_to_wire
from kvgate.datalayer.kvwire import external_hash as external_hash
