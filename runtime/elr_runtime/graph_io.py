"""Graph names, input/output names and special byte ids shared by elr-export and the runtime.

Every ONNX graph of a bundle is defined here once: elr-export names the graph inputs and
outputs from these tuples, and the runtime checks a loaded graph against them.

KV caches are ring buffers that the graphs read but never copy. Every step graph takes, after
its own inputs:

    past_positions  (batch, capacity) int64, the absolute position of the key in each slot,
                    EMPTY_POSITION for an empty slot
    past_keys.<i>   (batch, n_heads, capacity, head_dim) float32, one input per layer i
    past_values.<i> the same for values

and returns, after its own outputs, only the keys and values of the positions it added:

    new_keys        (n_layers, batch, n_heads, new_length, head_dim) float32
    new_values      the same for values

The caller writes them into the slots of its ring buffers (slot = position % capacity). A
query attends to the slots and new positions inside its window, whatever their order, so a
ring of window - 1 slots serves any stream length, and nothing is ever trimmed or copied
whole. Keeping one input per layer matters: onnxruntime copies any slice it takes of an
input, so a stacked cache would be copied once per step.
"""

from __future__ import annotations

# Byte vocabulary: ids 0-255 are raw bytes, the ids below are special markers. The model's
# embedding and output layers have VOCAB_SIZE rows; ids between N_SPECIAL_IDS and VOCAB_SIZE
# are reserved and never produced by training.
BOS_ID = 256  # begin of sequence: position 0 of every sequence, a patch of its own
EOS_ID = 257  # end of sequence: predicted after the last byte of a document
BOT_ID = 258  # begin of latent thought: precedes the latent reasoning steps
EOT_ID = 259  # end of latent thought: follows the latent reasoning steps
PAD_ID = 260  # padding: fills the n-gram history before the first byte and unused batch slots
N_SPECIAL_IDS = 261
VOCAB_SIZE = 264

SPECIAL_IDS = {"bos": BOS_ID, "eos": EOS_ID, "bot": BOT_ID, "eot": EOT_ID, "pad": PAD_ID}

# Graph file stems; a bundle stores "<stem>.fp32.onnx" and/or "<stem>.int8.onnx".
ENCODER_GRAPH = "encoder_step"
GLOBAL_GRAPH = "global_step"
LATENT_GRAPH = "latent_loop"
DECODER_GRAPH = "decoder_step"
GRAPH_NAMES = (ENCODER_GRAPH, GLOBAL_GRAPH, LATENT_GRAPH, DECODER_GRAPH)

# Local encoder step: embeds new bytes and runs the causal byte-level encoder layers.
#   byte_ids        (batch, new_length) int64
#   prev_byte_ids   (batch, ngram_history) int64, the bytes before byte_ids (PAD_ID when none)
#   position_ids    (batch, new_length) int64, absolute byte positions
#   hidden          (batch, new_length, d_local) float32
ENCODER_INPUTS = ("byte_ids", "prev_byte_ids", "position_ids")
ENCODER_OUTPUTS = ("hidden",)

# Global step: pools one finished patch of encoder states and advances the global model.
#   patch_hidden    (batch, patch_length, d_local) float32, encoder states of the patch bytes
#   position_ids    (batch, 1) int64, the global position of this patch
#   global_hidden   (batch, 1, d_global) float32
GLOBAL_INPUTS = ("patch_hidden", "position_ids")
GLOBAL_OUTPUTS = ("global_hidden",)

# Latent loop: feeds the global model's last hidden state back as its next input, a fixed
# number of times (the manifest's n_latent_steps), unrolled inside the graph.
#   latent_input    (batch, 1, d_global) float32, the last global hidden state
#   position_ids    (batch, 1) int64, the global position of the first latent step
#   latent_hidden   (batch, 1, d_global) float32, the hidden state after the last step
LATENT_INPUTS = ("latent_input", "position_ids")
LATENT_OUTPUTS = ("latent_hidden",)

# Local decoder step: predicts the next byte from the bytes so far and the global context.
#   encoder_hidden  (batch, new_length, d_local) float32, the encoder's `hidden` output
#   global_context  (batch, new_length, d_global) float32, for each position the global output
#                   of the last finished patch before the byte being predicted
#   position_ids    (batch, new_length) int64
#   logits          (batch, new_length, VOCAB_SIZE) float32, scores of the next byte
DECODER_INPUTS = ("encoder_hidden", "global_context", "position_ids")
DECODER_OUTPUTS = ("logits",)

# The graph's own inputs and outputs, before the cache inputs and outputs of `graph_inputs`
# and `graph_outputs`.
GRAPH_INPUTS = {
    ENCODER_GRAPH: ENCODER_INPUTS,
    GLOBAL_GRAPH: GLOBAL_INPUTS,
    LATENT_GRAPH: LATENT_INPUTS,
    DECODER_GRAPH: DECODER_INPUTS,
}
GRAPH_OUTPUTS = {
    ENCODER_GRAPH: ENCODER_OUTPUTS,
    GLOBAL_GRAPH: GLOBAL_OUTPUTS,
    LATENT_GRAPH: LATENT_OUTPUTS,
    DECODER_GRAPH: DECODER_OUTPUTS,
}

# Position of an empty cache slot: so far before any query that no window reaches it.
EMPTY_POSITION = -(1 << 40)
POSITIONS_INPUT = "past_positions"
NEW_KEYS = "new_keys"
NEW_VALUES = "new_values"


def past_key_name(layer: int) -> str:
    return f"past_keys.{layer}"


def past_value_name(layer: int) -> str:
    return f"past_values.{layer}"


def cache_input_names(n_layers: int) -> tuple[str, ...]:
    """Return the cache inputs of a stack of `n_layers`: positions, then keys and values."""
    names = [POSITIONS_INPUT]
    for layer in range(n_layers):
        names += [past_key_name(layer), past_value_name(layer)]
    return tuple(names)


def graph_inputs(graph: str, n_layers: int) -> tuple[str, ...]:
    """Return every input name of `graph` whose cache stack has `n_layers` layers, in order."""
    return GRAPH_INPUTS[graph] + cache_input_names(n_layers)


def graph_outputs(graph: str) -> tuple[str, ...]:
    """Return every output name of `graph`, in order."""
    return GRAPH_OUTPUTS[graph] + (NEW_KEYS, NEW_VALUES)


# Version 2: ring-buffer caches (one input per layer, only new keys returned).
BUNDLE_FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
TABLE_NAME = "frequency_table.elrt"


def graph_filename(graph: str, precision: str) -> str:
    """Return the bundle file name of `graph` at `precision` ("fp32" or "int8")."""
    return f"{graph}.{precision}.onnx"
