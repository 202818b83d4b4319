import io
import mmap
import os
import pickle
import shutil
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from conftest import build_shards, write_config
from pipeline.data import batch_pool
from pipeline.data.batch_pool import SharedBatchPool, Slot
from pipeline.data.loader import ShardDataset, make_loader
from pipeline.data.samplers import EvalBatchSampler, SampleKeys, TrainBatchSampler
from pipeline.data.shards import ShardError
from pipeline.data.transforms import (
    Normalizer,
    TrainTransform,
    ValTransform,
    decode_resized_crop,
    jpeg_size,
)
from pipeline.paths import DataPaths
from synthetic import class_colour, write_image_tree


@pytest.fixture(scope="module")
def shards(module_tmp):
    tmp = module_tmp("loader")
    write_image_tree(tmp / "images", classes=3, train=12, val=5, sizes=[(64, 48)], plain=True)
    config = build_shards(write_config(tmp, tmp / "images"))
    return DataPaths.of(config)


def test_jpeg_size_reads_the_frame_header(ilsvrc_sample, image_tree):
    # Baseline, progressive, grayscale and CMYK JPEGs (the PNGs named .JPEG are left out).
    files = sorted(ilsvrc_sample.glob("val_flat/*.JPEG"))[:20] + [
        image_tree.root / path
        for path, action in sorted(image_tree.train_actions.items())[:20]
        if "PNG" not in action
    ]
    for path in files:
        data = path.read_bytes()
        assert jpeg_size(data) == Image.open(io.BytesIO(data)).size, path


def test_val_transform_matches_torchvision_resize_and_center_crop(ilsvrc_sample):
    for size, resize, tolerance in [(224, 256, 0.5), (56, 64, 5.0)]:  # 2nd: JPEG draft decode
        reference = T.Compose([T.Resize(resize), T.CenterCrop(size), T.PILToTensor()])
        transform = ValTransform(size, resize)
        for path in sorted(ilsvrc_sample.glob("val_flat/*.JPEG"))[:8]:
            data = path.read_bytes()
            out = torch.empty(size, size, 3, dtype=torch.uint8)
            transform(memoryview(data), 0, 0, out)
            expected = reference(Image.open(io.BytesIO(data)).convert("RGB")).permute(1, 2, 0)
            diff = (out.float() - expected.float()).abs().mean()
            assert diff < tolerance, (path.name, size, float(diff))


def test_draft_decoding_of_a_strongly_downscaled_crop_matches_a_full_decode(ilsvrc_sample):
    data = next(iter(sorted(ilsvrc_sample.glob("train/*/*.JPEG")))).read_bytes()
    width, height = jpeg_size(data)
    box = (0, 0, height, width)  # the whole image into 56 px: 1/4 or 1/8 DCT scaling
    out = torch.empty(56, 56, 3, dtype=torch.uint8)
    decode_resized_crop(memoryview(data), (width, height), box, out)
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((56, 56), Image.Resampling.BILINEAR)
    diff = (out.float() - torch.from_numpy(np.asarray(full)).float()).abs().mean()
    assert diff < 6, float(diff)


def test_a_crop_written_into_its_batch_slot_is_torchvisions_resized_crop(ilsvrc_sample):
    """The crop is resized straight into its slot of the batch (a view of shared memory), and
    a flip mirrors the crop before resizing: pixel for pixel what torchvision's
    resized_crop(antialias) and hflip give."""
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    data = next(iter(sorted(ilsvrc_sample.glob("train/*/*.JPEG")))).read_bytes()
    width, height = jpeg_size(data)
    assert width > 100 and height > 100
    image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    batch = torch.zeros(4, 48, 48, 3, dtype=torch.uint8)
    # crops below twice the output (the draft-decode path is compared above), up and down
    cases = [
        ((1, 2, 80, 90), False),
        ((5, 9, 40, 61), True),
        ((30, 20, 70, 50), False),
        ((1, 2, 80, 90), True),
    ]
    for slot, (box, flip) in enumerate(cases):
        decode_resized_crop(memoryview(data), (width, height), box, batch[slot], flip=flip)
        expected = TF.resized_crop(image, *box, [48, 48], antialias=True)
        expected = TF.horizontal_flip(expected) if flip else expected
        assert torch.equal(batch[slot], expected.permute(1, 2, 0)), (box, flip)


def test_train_augmentation_depends_only_on_seed_epoch_and_index(shards):
    dataset = ShardDataset(shards.shard_dir("train"), TrainTransform(32, seed=5))
    a, _ = dataset.__getitems__(SampleKeys(epoch=1, indices=[3, 4]))
    b, _ = dataset.__getitems__(SampleKeys(epoch=1, indices=[3, 4]))
    c, _ = dataset.__getitems__(SampleKeys(epoch=2, indices=[3, 4]))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_loader_batches_are_uint8_channels_last_with_the_right_labels(shards):
    dataset = ShardDataset(shards.shard_dir("train"), TrainTransform(32, seed=0))
    labels = dataset.labels()
    sampler = TrainBatchSampler(len(dataset), 4, world_size=1, rank=0, accumulate=1, seed=0)
    sequential = list(make_loader(dataset, sampler, workers=0))
    parallel = list(make_loader(dataset, sampler, workers=2))
    assert len(sequential) == len(dataset) // 4
    for (x0, y0), (x1, y1), keys in zip(sequential, parallel, sampler, strict=True):
        assert x0.dtype == torch.uint8 and x0.shape == (4, 3, 32, 32)
        assert x0.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x0, x1) and torch.equal(y0, y1)  # workers change nothing
        assert y0.tolist() == labels[keys.indices].tolist()


def test_the_loader_benchmarks_ceiling_decodes_what_its_timed_loader_run_delivers(shards):
    """benchmarks/loader.py divides a loader run's rate by its ceiling's: both must decode the
    same images with the same crops and flips."""
    from benchmarks.loader_ceilings import warmup_batches, window_keys

    dataset = ShardDataset(shards.shard_dir("train"), TrainTransform(32, seed=0))
    epoch, workers, batches = 3, 2, 4
    sampler = TrainBatchSampler(len(dataset), 4, seed=0)
    sampler.set_epoch(epoch)
    delivered = iter(make_loader(dataset, sampler, workers))
    for _ in range(warmup_batches(workers)):
        next(delivered)
    timed = torch.cat([next(delivered)[0] for _ in range(batches)]).permute(0, 2, 3, 1)
    keys = window_keys(len(dataset), 4, epoch, workers, batches)
    decoded = torch.empty(len(keys), 32, 32, 3, dtype=torch.uint8)
    for k, (key_epoch, index) in enumerate(keys):
        dataset.transform(dataset.read(index)[0], key_epoch, index, decoded[k])
    assert torch.equal(decoded, timed)


def _buffer(images: torch.Tensor, loader) -> tuple[str, int]:
    """Which shared buffer a batch from a worker lives in: its slot in the loader's pool, or
    the inode of a fresh buffer's shared-memory file (a worker with no free buffer makes one).
    Not the batch's address: a fresh buffer is often mapped where the last one was."""
    pool = loader.worker_init_fn.__self__
    for index, array in pool._mapped.items():
        if array.ctypes.data == images.data_ptr():
            return "slot", index
    fd, _ = images.untyped_storage()._share_fd_cpu_()
    return "file", os.fstat(fd).st_ino


def test_workers_reuse_their_buffers_once_the_consumer_drops_each_batch(shards):
    dataset = ShardDataset(shards.shard_dir("train"), TrainTransform(32, seed=0))
    sampler = TrainBatchSampler(len(dataset), 1, seed=0)
    reference = list(make_loader(dataset, sampler, workers=0))
    buffers = []
    loader = make_loader(dataset, sampler, 2, prefetch_batches=2)
    for step, (images, _) in enumerate(loader):
        assert torch.equal(images, reference[step][0]), step
        buffers.append(_buffer(images, loader))
    assert len(buffers) == 36
    assert len(set(buffers)) <= 2 * (2 + 2)  # each worker's pool: 2 queued + 2


def test_a_buffer_a_worker_replaces_with_a_larger_one_reaches_the_consumer(shards):
    """A batch larger than the buffers so far makes its worker allocate a new buffer, which
    must cross to the consumer in place of the one it had mapped."""
    dataset = ShardDataset(shards.shard_dir("train"), TrainTransform(32, seed=0))
    sizes = [1, 1, 1, 1, 3, 1, 3, 3, 1, 2]
    keys, start = [], 0
    for size in sizes:
        keys.append(SampleKeys(0, list(range(start, start + size))))
        start += size
    reference = list(make_loader(dataset, keys, workers=0))
    buffers = []
    # Each batch is dropped before the next arrives, so the worker always has a free buffer.
    loader = make_loader(dataset, keys, 1, prefetch_batches=1)
    for step, (images, labels) in enumerate(loader):
        assert torch.equal(images, reference[step][0]), step
        assert torch.equal(labels, reference[step][1]), step
        buffers.append(_buffer(images, loader))
    assert len(buffers) == len(sizes)
    assert len(set(buffers)) < len(sizes)  # buffers were reused, not all fresh


def test_a_batch_the_consumer_still_holds_is_never_overwritten(shards):
    dataset = ShardDataset(shards.shard_dir("train"), TrainTransform(32, seed=0))
    sampler = TrainBatchSampler(len(dataset), 1, seed=0)
    reference = list(make_loader(dataset, sampler, workers=0))
    held, buffers = {}, []
    loader = make_loader(dataset, sampler, 2, prefetch_batches=2)
    for step, (images, _) in enumerate(loader):
        buffers.append(_buffer(images, loader))
        if step % 4 == 0:
            held[step] = images
    assert len(held) == 9
    for step, images in held.items():
        assert torch.equal(images, reference[step][0]), f"held batch {step} was overwritten"
        assert buffers[step] not in buffers[step + 1 :], f"held batch {step}'s buffer reused"
    assert len(set(buffers)) < len(buffers)  # the batches not held did share buffers


def test_images_keep_their_class_colour(shards):
    """The synthetic classes differ in colour: the decoded crops must too."""
    dataset = ShardDataset(shards.shard_dir("val"), ValTransform(32, 32))
    images, labels = dataset.__getitems__(SampleKeys(0, list(range(len(dataset)))))
    colours = torch.tensor(np.stack([class_colour(c) for c in range(3)]), dtype=torch.float32)
    for c in labels.unique().tolist():
        mean = images[labels == c].float().mean((0, 2, 3))
        distances = (colours - mean).norm(dim=1)
        assert int(distances.argmin()) == c and distances[c] < 25, (c, mean, colours[c])


def test_eval_loader_sees_every_val_image_once(shards):
    dataset = ShardDataset(shards.shard_dir("val"), ValTransform(32, 36))
    seen = []
    for rank in range(2):
        for _, labels in make_loader(dataset, EvalBatchSampler(len(dataset), 4, 2, rank), 0):
            seen += labels.tolist()
    assert sorted(seen) == sorted(dataset.labels().tolist())


def test_normalizer_matches_torchvision_normalize_in_either_memory_format():
    nhwc = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    for images in (nhwc.permute(0, 3, 1, 2), nhwc.permute(0, 3, 1, 2).contiguous()):
        expected = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(images.float() / 255)
        for channels_last in (True, False):
            before = images.clone()
            out = Normalizer(torch.device("cpu"), channels_last=channels_last)(images)
            assert torch.allclose(out, expected, atol=1e-5)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            assert out.is_contiguous(memory_format=fmt)
            assert torch.equal(images, before)  # the batch itself is left alone


def _copy_split(shards, tmp_path):
    copy = tmp_path / "val"
    shutil.copytree(shards.shard_dir("val"), copy)
    return copy, next(copy.glob("*.arrow"))


def test_a_flipped_byte_is_caught_when_the_row_is_read(shards, tmp_path):
    folder, shard = _copy_split(shards, tmp_path)
    dataset = ShardDataset(folder, ValTransform(32, 32))
    jpeg, _ = dataset.read(2)
    data = bytearray(shard.read_bytes())
    at = data.find(bytes(jpeg[-300:-260])) + 10  # entropy-coded data: unique to this row
    assert at > 10
    data[at] ^= 0x01
    shard.write_bytes(bytes(data))
    dataset = ShardDataset(folder, ValTransform(32, 32))  # size unchanged: opens fine
    with pytest.raises(ShardError, match=rf"shard {shard}: row 2 fails its crc32"):
        dataset.read(2)
    dataset.read(1)  # other rows are still usable


def test_a_truncated_shard_is_refused_naming_the_file(shards, tmp_path):
    folder, shard = _copy_split(shards, tmp_path)
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ShardError, match=rf"shard {shard} has \d+ bytes but index.json records"):
        ShardDataset(folder, ValTransform(32, 32))


def test_a_pool_sent_to_a_spawned_worker_shares_its_flags(monkeypatch):
    """Workers started with "spawn" get the pool pickled; the flags must stay shared."""
    pool = SharedBatchPool(workers=2, buffers_per_worker=3)
    copy = pickle.loads(ForkingPickler.dumps(pool))
    monkeypatch.setattr(batch_pool, "_worker_pool", None)  # restored after the test
    copy.attach(1)
    _, slot = copy.take(16)
    assert slot == Slot(pool.id, 3)  # worker 1's first buffer
    assert pool.flags.tolist() == [0, 0, 0, 1, 0, 0]  # seen by the consumer's pool
    pool.release(slot.index)
    assert copy.take(16)[1] == slot  # and the release by the worker's copy


def _shared_memory_resident_kb() -> int:
    lines = Path("/proc/self/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines)
    return int(status["RssShmem"].split()[0])


def test_a_worker_makes_and_faults_in_all_its_buffers_at_its_first_batch(monkeypatch):
    """No later batch may pay for a new buffer's page faults: all are made, and written to,
    at the first."""
    pool = SharedBatchPool(workers=1, buffers_per_worker=3)
    monkeypatch.setattr(batch_pool, "_worker_pool", None)  # restored after the test
    pool.attach(0)
    nbytes = 256 * mmap.PAGESIZE
    before = _shared_memory_resident_kb()
    storage, slot = pool.take(nbytes)
    assert _shared_memory_resident_kb() - before >= 3 * nbytes // 1024
    made = {buffer.data_ptr() for buffer in pool._buffers.values()}
    assert len(made) == 3 and storage.data_ptr() in made
    taken = [slot]
    for _ in range(6):  # two buffers in use at a time: the pool's own, every time
        storage, slot = pool.take(nbytes)
        assert slot is not None and storage.data_ptr() in made
        taken.append(slot)
        pool.release(taken.pop(0).index)
