"""Images, the dataset and its versions: decoding, preprocessing, validation checks, the
split and TFRecords, DVC."""
