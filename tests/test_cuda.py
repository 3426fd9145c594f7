"""The same computations on a CUDA GPU and on the CPU give the same answers.

Skipped on machines without a GPU (CI has none); run ``python -m pytest tests/test_cuda.py``
on a GPU machine. Each test computes something once on the CPU and once on ``cuda`` from the
same weights and inputs, in float64 where the GPU's float32 kernels (TF32, reordered sums)
would otherwise blur the comparison.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import maml, matching, protonet
from helpers.device import pick_device
from helpers.episodes import EpisodeSampler, FewShotDataset
from helpers.nets import Conv4
from helpers.training import DeviceEpisodeSampler, train_episodic

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def label_encoded_dataset(n_classes: int = 12, per_class: int = 8) -> FewShotDataset:
    """Images whose mean brightness encodes the class, so a few steps learn them."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(n_classes), per_class)
    images = rng.integers(0, 40, size=(len(labels), 28, 28)).astype(np.uint8)
    images += (labels * (200 // n_classes)).astype(np.uint8)[:, None, None]
    return FewShotDataset(
        "label-encoded", images, labels, tuple(f"class {c}" for c in range(n_classes))
    )


def test_pick_device_prefers_the_gpu():
    assert pick_device().type == "cuda"


def test_device_sampler_draws_the_same_episodes_on_the_gpu():
    data = label_encoded_dataset()
    on_cpu = DeviceEpisodeSampler(data, 5, 2, 3, device="cpu", seed=4).take(5)
    on_gpu = DeviceEpisodeSampler(data, 5, 2, 3, device=CUDA, seed=4).take(5)
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert b.support_images.device.type == "cuda" and b.query_labels.device.type == "cuda"
        assert np.array_equal(a.support_indices, b.support_indices) and np.array_equal(
            a.query_indices, b.query_indices
        )
        # the same pixels, scaled to [0, 1], to the last bit: episodes.float_images reads the CPU's
        # quotients off a table on the GPU (CUDA's own division by 255 rounds some values differently)
        assert torch.equal(a.support_images, b.support_images.cpu())
        expected = torch.from_numpy(data.images[a.query_indices]).float().div(255).unsqueeze(1)
        assert torch.equal(b.query_images.cpu(), expected) and torch.equal(a.query_images, expected)


def in_float64(episode, device):
    moved = episode.to(device)
    return replace(
        moved,
        support_images=moved.support_images.double(),
        query_images=moved.query_images.double(),
    )


def test_protonet_loss_and_gradient_agree_between_cpu_and_gpu():
    torch.manual_seed(0)
    reference = Conv4().double()
    episode = DeviceEpisodeSampler(label_encoded_dataset(), 5, 2, 3, device="cpu", seed=1).sample()
    results = []
    for device in ("cpu", CUDA):
        model = Conv4().double()
        model.load_state_dict(reference.state_dict())
        model.to(device)
        loss, accuracy = protonet.ProtoNet(model).episode_loss(in_float64(episode, device))
        loss.backward()
        results.append(
            (float(loss.detach()), float(accuracy), model.blocks[0][0].weight.grad.cpu())
        )
    (loss_c, acc_c, grad_c), (loss_g, acc_g, grad_g) = results
    assert abs(loss_c - loss_g) < 1e-9 and acc_c == acc_g
    assert torch.allclose(grad_c, grad_g, atol=1e-9)


@pytest.mark.parametrize("fce", [False, True])
def test_matching_network_agrees_between_cpu_and_gpu(fce):
    torch.manual_seed(0)
    reference = matching.MatchingNetwork(fce=fce, processing_steps=3).double()
    g = torch.Generator().manual_seed(0)
    support = torch.rand(10, 1, 28, 28, generator=g, dtype=torch.float64)
    labels = torch.arange(5).repeat_interleave(2)
    queries = torch.rand(7, 1, 28, 28, generator=g, dtype=torch.float64)
    outputs = []
    for device in ("cpu", CUDA):
        model = matching.MatchingNetwork(fce=fce, processing_steps=3).double()
        model.load_state_dict(reference.state_dict())
        model.to(device).eval()
        with torch.no_grad():
            outputs.append(
                model(support.to(device), labels.to(device), queries.to(device), 5).cpu()
            )
    assert torch.allclose(outputs[0], outputs[1], atol=1e-9)


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_agrees_between_cpu_and_gpu(first_order):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    ).double()
    g = torch.Generator().manual_seed(0)
    batch = maml.TaskBatch(
        torch.randn(3, 5, 2, generator=g, dtype=torch.float64),
        torch.randn(3, 5, 1, generator=g, dtype=torch.float64),
        torch.randn(3, 6, 2, generator=g, dtype=torch.float64),
        torch.randn(3, 6, 1, generator=g, dtype=torch.float64),
    )
    grads = {}
    for device in ("cpu", CUDA):
        model = net.to(device)
        params = maml.parameters_of(model)
        for mode in ("loop", "vmap"):
            _, grads[device, mode] = maml.meta_gradient(
                model, params, batch.to(device), F.mse_loss, 0.1, 2, first_order, mode=mode
            )
    for key, value in grads.items():
        for name in value:
            assert torch.allclose(value[name].cpu(), grads["cpu", "loop"][name], atol=1e-10), (
                key,
                name,
            )


@pytest.mark.parametrize("first_order", [False, True])
def test_the_compiled_conv4_meta_step_on_the_gpu_equals_the_loop_on_the_cpu(first_order):
    """The fast path (mode="compiled": torch.compile of the whole vmap meta-gradient) on CUDA,
    at the paper's meta-batch of 32 5-way 1-shot tasks, gives the CPU loop's meta-gradient, in
    float64; and the MAML learner's compiled meta-step leaves that gradient on the weights."""
    import copy

    torch.manual_seed(0)
    reference = maml.maml_conv4(5).double()
    g = torch.Generator().manual_seed(0)
    batch = maml.TaskBatch(
        torch.rand(32, 5, 1, 28, 28, generator=g, dtype=torch.float64),
        torch.arange(5).repeat(32, 1),
        torch.rand(32, 5, 1, 28, 28, generator=g, dtype=torch.float64),
        torch.arange(5).repeat(32, 1),
    )
    loss_cpu, on_cpu = maml.meta_gradient(
        reference,
        maml.parameters_of(reference),
        batch,
        F.cross_entropy,
        0.4,
        1,
        first_order,
        "loop",
    )
    gpu = copy.deepcopy(reference).to(CUDA)
    loss_gpu, on_gpu = maml.meta_gradient(
        gpu,
        maml.parameters_of(gpu),
        batch.to(CUDA),
        F.cross_entropy,
        0.4,
        1,
        first_order,
        "compiled",
    )
    assert abs(float(loss_cpu) - float(loss_gpu)) < 1e-9
    for name, value in on_cpu.items():
        assert torch.allclose(on_gpu[name].cpu(), value, atol=1e-9, rtol=1e-7), name
    learner = maml.MAML(gpu, 0.4, 1e-3, 1, first_order, F.cross_entropy, "compiled")
    assert abs(learner.meta_step(batch) - float(loss_cpu)) < 1e-9
    for name, p in gpu.named_parameters():
        assert torch.allclose(p.grad.cpu(), on_cpu[name], atol=1e-9, rtol=1e-7), name


def test_a_short_training_run_on_the_gpu_learns():
    torch.manual_seed(0)
    data = label_encoded_dataset()
    encoder = Conv4(hidden=16).to(CUDA)
    method = protonet.ProtoNet(encoder)
    val = EpisodeSampler(data, 5, 1, 3, seed=9).take(10)
    history = train_episodic(
        method,
        DeviceEpisodeSampler(data, 5, 1, 3, device=CUDA, seed=0),
        30,
        torch.optim.Adam(encoder.parameters(), lr=1e-3),
        val_episodes=val,
        val_every=30,
        device=CUDA,
        progress=False,
    )
    assert next(encoder.parameters()).device.type == "cuda"
    assert history.val_accuracy[-1] > 0.6  # chance is 0.2


def test_a_conv4_on_the_gpu_ports_to_keras_as_its_cpu_copy_does():
    # notebook 05 hands siamese.conv4_base_from_torch the Conv-4 on the device it was loaded
    # on; a convolution without bias folds a zero bias made on that device
    pytest.importorskip("keras")
    from helpers import siamese

    torch.manual_seed(0)
    encoder = Conv4()
    for block in encoder.blocks:
        block[0].bias = None
        block[1].running_mean.uniform_(-0.5, 0.5)
    images = np.random.default_rng(0).random((8, 28, 28), dtype=np.float32)
    on_cpu = siamese.conv4_base_from_torch(encoder)(images, training=False)
    on_gpu = siamese.conv4_base_from_torch(encoder.to(CUDA))(images, training=False)
    np.testing.assert_allclose(np.asarray(on_gpu), np.asarray(on_cpu), atol=1e-6)
