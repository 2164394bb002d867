"""captioner against the TensorFlow tutorial's model, in one run on the same CPU.

    make bench-env
    OMP_NUM_THREADS=1 .venv-bench/bin/python bench/vs_tensorflow.py --threads 1

The TensorFlow side is the tutorial "Image captioning with visual attention" (the seed
notebook) written out from its published architecture: CNN_Encoder (Dense + ReLU),
BahdanauAttention (W1, W2, V), RNN_Decoder (Embedding, GRU with return_sequences and
return_state, fc1, fc2), the ``@tf.function`` ``train_step`` with its ``tf.GradientTape``
teacher-forcing loop and masked SparseCategoricalCrossentropy, Adam, and its ``evaluate()``
loop captioning one image at a time (argmax instead of sampling: greedy). The captioner side is
``ShowAttendTell`` with the same sizes, ``caption_loss`` and Adam, and
``captioner.caption.decoding``.
Both sides get the same random features and captions; their timed blocks are interleaved and
each figure is the median over the repeats, so a change in the machine's load hits both.

Measured: training captions/s (TF vs captioner), greedy captioning of N grids (TF one by one
vs captioner batched), beam search (captioner one image at a time vs batched). ``--skip-tf``
runs the captioner side alone (no TensorFlow needed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captioner.caption.config import ModelConfig
from captioner.caption.decoder import ShowAttendTell
from captioner.caption.decoding import beam_search, greedy_decode
from captioner.caption.losses import caption_loss
from captioner.data.vocabulary import END_ID, PAD_ID, START_ID


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--regions", type=int, default=64)
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--min-words", type=int, default=8)
    parser.add_argument("--max-words", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=4, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grids", type=int, default=1000, help="feature grids to caption")
    parser.add_argument("--decode-repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=20, help="words per caption")
    parser.add_argument("--decode-batch", type=int, default=250)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, both sides")
    parser.add_argument(
        "--variants",
        default="fp32",
        help="captioner training variants, comma-separated: fp32 (padding skipped), "
        "fp32-padded (every step of every caption, as the seed), bf16 (CPU autocast), "
        "fp32-compiled, bf16-compiled (torch.compile, every padded step)",
    )
    parser.add_argument("--skip-tf", action="store_true", help="captioner side only")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--skip-beam", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    return parser.parse_args()


# --------------------------------------------------------------------------- data
def make_data(args: argparse.Namespace, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random features [count, R, C] and captions <start> w… <end> <pad>… [count, L]."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((count, args.regions, args.channels), dtype=np.float32)
    length = args.max_words + 2
    caps = np.full((count, length), PAD_ID, dtype=np.int64)
    words = rng.integers(args.min_words, args.max_words + 1, size=count)
    for i, n in enumerate(words):
        caps[i, 0] = START_ID
        caps[i, 1 : n + 1] = rng.integers(4, args.vocab, size=n)
        caps[i, n + 1] = END_ID
    return feats, caps


# --------------------------------------------------------------------------- TensorFlow
def build_tensorflow(args: argparse.Namespace) -> dict[str, Any]:
    """The tutorial's model, train_step and evaluate(), returned as callables."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.random.set_seed(0)
    keras = tf.keras

    class CNN_Encoder(keras.Model):  # noqa: N801 - the tutorial's names
        def __init__(self, embedding_dim: int) -> None:
            super().__init__()
            self.fc = keras.layers.Dense(embedding_dim)

        def call(self, x: Any) -> Any:
            return tf.nn.relu(self.fc(x))

    class BahdanauAttention(keras.Model):
        def __init__(self, units: int) -> None:
            super().__init__()
            self.W1 = keras.layers.Dense(units)
            self.W2 = keras.layers.Dense(units)
            self.V = keras.layers.Dense(1)

        def call(self, features: Any, hidden: Any) -> tuple[Any, Any]:
            hidden_with_time_axis = tf.expand_dims(hidden, 1)
            attention_hidden_layer = tf.nn.tanh(self.W1(features) + self.W2(hidden_with_time_axis))
            score = self.V(attention_hidden_layer)
            attention_weights = tf.nn.softmax(score, axis=1)
            context_vector = tf.reduce_sum(attention_weights * features, axis=1)
            return context_vector, attention_weights

    class RNN_Decoder(keras.Model):  # noqa: N801
        def __init__(self, embedding_dim: int, units: int, vocab_size: int) -> None:
            super().__init__()
            self.units = units
            self.embedding = keras.layers.Embedding(vocab_size, embedding_dim)
            self.gru = keras.layers.GRU(
                self.units,
                return_sequences=True,
                return_state=True,
                recurrent_initializer="glorot_uniform",
            )
            self.fc1 = keras.layers.Dense(self.units)
            self.fc2 = keras.layers.Dense(vocab_size)
            self.attention = BahdanauAttention(self.units)

        def call(self, x: Any, features: Any, hidden: Any) -> tuple[Any, Any, Any]:
            context_vector, attention_weights = self.attention(features, hidden)
            x = self.embedding(x)
            x = tf.concat([tf.expand_dims(context_vector, 1), x], axis=-1)
            # As published: the GRU starts from zeros; `hidden` only feeds the attention.
            output, state = self.gru(x)
            x = self.fc1(output)
            x = tf.reshape(x, (-1, x.shape[2]))
            x = self.fc2(x)
            return x, state, attention_weights

        def reset_state(self, batch_size: int) -> Any:
            return tf.zeros((batch_size, self.units))

    encoder = CNN_Encoder(args.embedding_dim)
    decoder = RNN_Decoder(args.embedding_dim, args.units, args.vocab)
    optimizer = keras.optimizers.Adam()
    loss_object = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    def loss_function(real: Any, pred: Any) -> Any:
        mask = tf.math.logical_not(tf.math.equal(real, 0))
        loss_ = loss_object(real, pred)
        mask = tf.cast(mask, dtype=loss_.dtype)
        loss_ *= mask
        return tf.reduce_mean(loss_)

    @tf.function
    def train_step(img_tensor: Any, target: Any) -> tuple[Any, Any]:
        loss = 0.0
        hidden = decoder.reset_state(batch_size=target.shape[0])
        dec_input = tf.expand_dims([START_ID] * target.shape[0], 1)
        with tf.GradientTape() as tape:
            features = encoder(img_tensor)
            for i in range(1, target.shape[1]):
                predictions, hidden, _ = decoder(dec_input, features, hidden)
                loss += loss_function(target[:, i], predictions)
                dec_input = tf.expand_dims(target[:, i], 1)
        total_loss = loss / int(target.shape[1])
        trainable_variables = encoder.trainable_variables + decoder.trainable_variables
        gradients = tape.gradient(loss, trainable_variables)
        optimizer.apply_gradients(zip(gradients, trainable_variables, strict=True))
        return loss, total_loss

    def evaluate(img_tensor_val: Any) -> tuple[list[int], np.ndarray]:
        """The tutorial's evaluate() from the cached 64×2048 grid, with argmax (greedy)."""
        attention_plot = np.zeros((args.max_length, args.regions))
        hidden = decoder.reset_state(batch_size=1)
        features = encoder(img_tensor_val)
        dec_input = tf.expand_dims([START_ID], 0)
        result: list[int] = []
        for i in range(args.max_length):
            predictions, hidden, attention_weights = decoder(dec_input, features, hidden)
            attention_plot[i] = tf.reshape(attention_weights, (-1,)).numpy()
            predicted_id = int(tf.argmax(predictions[0]).numpy())
            result.append(predicted_id)
            if predicted_id == END_ID:
                return result, attention_plot[: len(result)]
            dec_input = tf.expand_dims([predicted_id], 0)
        return result, attention_plot[: len(result)]

    def train(feats: np.ndarray, caps: np.ndarray) -> None:
        train_step(tf.constant(feats), tf.constant(caps.astype(np.int32)))

    def greedy(feats: np.ndarray) -> list[list[int]]:
        return [evaluate(tf.constant(feats[i : i + 1]))[0] for i in range(len(feats))]

    def forbid_end() -> None:
        bias = decoder.fc2.bias.numpy()
        bias[END_ID] = -1e4
        decoder.fc2.bias.assign(bias)

    return {
        "version": tf.__version__,
        "train": train,
        "greedy": greedy,
        "forbid_end": forbid_end,
    }


# --------------------------------------------------------------------------- captioner
VARIANTS = ("fp32", "fp32-padded", "bf16", "fp32-compiled", "bf16-compiled")


def build_captioner(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=args.vocab,
        feature_channels=args.channels,
        num_regions=args.regions,
        encoder_dim=args.embedding_dim,
        embed_dim=args.embedding_dim,
        attention_dim=args.units,
        hidden_dim=args.units,
    )
    model = ShowAttendTell(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    compiled: list[Any] = []  # torch.compile(model), built on first use (minutes on a CPU)

    def train(feats: np.ndarray, caps: np.ndarray, variant: str = "fp32") -> None:
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {VARIANTS}")
        model.train()
        captions = torch.from_numpy(caps)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.startswith("bf16")):
            if variant.endswith("-compiled"):  # every padded step: the graph needs fixed shapes
                if not compiled:
                    compiled.append(torch.compile(model))
                out = compiled[0](torch.from_numpy(feats), captions)
            else:
                out = model(
                    torch.from_numpy(feats), captions, skip_padding=variant != "fp32-padded"
                )
        loss, _ = caption_loss(out.logits.float(), captions[:, 1:], out.attention.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def decode(feats: np.ndarray, batch: int, fn: Callable[..., Any], **kw: Any) -> list[Any]:
        model.eval()
        out: list[Any] = []
        for start in range(0, len(feats), batch):
            chunk = torch.from_numpy(feats[start : start + batch])
            out.extend(h.token_ids for h in fn(model, chunk, max_length=args.max_length, **kw))
        return out

    def forbid_end() -> None:
        with torch.no_grad():
            model.fc2.bias[END_ID] = -1e4

    return {
        "version": torch.__version__,
        "forbid_end": forbid_end,
        "train": train,
        "greedy": lambda f: decode(f, args.decode_batch, greedy_decode),
        "beam_batched": lambda f: decode(
            f, args.decode_batch, beam_search, beam_size=args.beam_size
        ),
        "beam_single": lambda f: decode(f, 1, beam_search, beam_size=args.beam_size),
    }


# --------------------------------------------------------------------------- timing
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def interleave(
    sides: dict[str, Callable[[], Any]], repeats: int, units: float
) -> dict[str, dict[str, Any]]:
    """Run each side once per repeat, alternating; units/s of each run, median reported."""
    rates: dict[str, list[float]] = {name: [] for name in sides}
    outputs: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in sides.items():
            seconds, outputs[name] = timed(fn)
            rates[name].append(units / seconds)
    return {
        name: {"median": statistics.median(r), "runs": [round(x, 2) for x in r]}
        for name, r in rates.items()
    } | {"_outputs": outputs}


def mean_words(captions: list[list[int]]) -> float:
    return float(np.mean([len(c) for c in captions]))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or ''}",
        "load_average_start": os.getloadavg(),
        "threads": args.threads,
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    ours = build_captioner(args)
    tf_side = None if args.skip_tf else build_tensorflow(args)
    if tf_side:
        report["tensorflow"] = tf_side["version"]

    feats, caps = make_data(args, args.batch_size, seed=1)
    train_sides: dict[str, Callable[[], Any]] = {}
    if tf_side:
        train_sides["tensorflow"] = lambda: tf_side["train"](feats, caps)
    for variant in args.variants.split(","):
        train_sides[f"captioner-{variant}"] = partial(ours["train"], feats, caps, variant)
    if args.skip_train:
        train_sides = {}
    for fn in train_sides.values():  # warm-up: tf.function tracing, allocator
        fn()

    def block(fn: Callable[[], Any]) -> Callable[[], None]:
        return lambda: [fn() for _ in range(args.train_steps)]

    train = interleave(
        {k: block(v) for k, v in train_sides.items()},
        args.repeats,
        args.train_steps * args.batch_size,
    )
    train.pop("_outputs")
    if train:
        report["train_captions_per_s"] = train
        print(f"training, batch {args.batch_size}, {args.max_words + 2} tokens (captions/s):")
    for name, r in train.items():
        print(f"  {name:22s} {r['median']:8.1f}  runs {r['runs']}")
    if tf_side and train:
        report["train_ratio"] = {}
        for name in train_sides:
            if name != "tensorflow":
                ratio = train[name]["median"] / train["tensorflow"]["median"]
                report["train_ratio"][name] = ratio
                print(f"  ratio {name} / tensorflow: {ratio:.2f}x")

    if not args.skip_decode:
        # Random weights would stop the captions at arbitrary lengths (the tutorial's model
        # often says <end> first): with <end> made impossible on both sides, every caption
        # runs max_length steps and both sides do the same work.
        grids, _ = make_data(args, args.grids, seed=2)
        ours["forbid_end"]()
        if tf_side:
            tf_side["greedy"](grids[:1])  # builds the layers (and warms up)
            tf_side["forbid_end"]()
        greedy_sides = {"captioner_batched": lambda: ours["greedy"](grids)}
        if tf_side:
            greedy_sides = {
                "tensorflow_one_by_one": lambda: tf_side["greedy"](grids)
            } | greedy_sides
        greedy = interleave(greedy_sides, args.decode_repeats, args.grids)
        outputs = greedy.pop("_outputs")
        report["greedy_grids_per_s"] = greedy
        report["greedy_mean_words"] = {k: mean_words(v) for k, v in outputs.items()}
        print(f"greedy captioning of {args.grids} grids (grids/s):")
        for name, r in greedy.items():
            print(f"  {name:22s} {r['median']:8.1f}  runs {r['runs']}")
        if tf_side:
            ratio = (
                greedy["captioner_batched"]["median"] / greedy["tensorflow_one_by_one"]["median"]
            )
            report["greedy_ratio"] = ratio
            print(f"  ratio: {ratio:.1f}x")

    if not args.skip_decode and not args.skip_beam:
        beam = interleave(
            {
                "one_by_one": lambda: ours["beam_single"](grids),
                "batched": lambda: ours["beam_batched"](grids),
            },
            args.decode_repeats,
            args.grids,
        )
        outputs = beam.pop("_outputs")
        same = sum(a == b for a, b in zip(outputs["one_by_one"], outputs["batched"], strict=True))
        report["beam_grids_per_s"] = beam
        report["beam_same_captions"] = same
        ratio = beam["batched"]["median"] / beam["one_by_one"]["median"]
        report["beam_ratio"] = ratio
        print(f"beam search (beam {args.beam_size}) of {args.grids} grids (grids/s):")
        for name, r in beam.items():
            print(f"  {name:22s} {r['median']:8.1f}  runs {r['runs']}")
        print(f"  ratio: {ratio:.1f}x; identical captions: {same}/{args.grids}")

    report["load_average_end"] = os.getloadavg()
    print(f"load average: start {report['load_average_start']}, end {report['load_average_end']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
