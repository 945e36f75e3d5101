"""TFRecords of prepared images: what augment_data writes and the training steps read."""

from __future__ import annotations

from pathlib import Path


def write_tfrecord(path: Path, images, masks, labels, ids, augmented) -> None:
    """One tf.train.Example per row: raw uint8 image and mask, label, id, augmented flag."""
    import tensorflow as tf

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image, mask, label, image_id, aug in zip(
            images, masks, labels, ids, augmented, strict=True
        ):
            features = {
                "image": _bytes(image.tobytes()),
                "mask": _bytes(mask.tobytes()),
                "label": _int(label),
                "id": _bytes(str(image_id).encode()),
                "augmented": _int(aug),
            }
            example = tf.train.Example(features=tf.train.Features(feature=features))
            # deterministic: the features map in one order in every process, so the same
            # rows give the same bytes (and DVC the same hash) from run to run
            writer.write(example.SerializeToString(deterministic=True))


def read_tfrecord(path: Path, image_size: int):
    """A tf.data.Dataset of (image float32 [S,S,1] in [0,1], mask float32 [S,S,1], label)."""
    import tensorflow as tf

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "mask": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        image = tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), (image_size, image_size, 1))
        mask = tf.reshape(tf.io.decode_raw(ex["mask"], tf.uint8), (image_size, image_size, 1))
        return tf.cast(image, tf.float32) / 255.0, tf.cast(mask, tf.float32), ex["label"]

    return tf.data.TFRecordDataset(str(path)).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
