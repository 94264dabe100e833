"""Fused attention (scaled_dot_product_attention) computes what perceiver-pytorch's einsum attention does."""
import pytest
import torch
import torch.nn.functional as F
from perceiver_pytorch import perceiver_io as pio

from models import cpg, perceiver_io
from models.build import Network
from models.perceiver_io import use_fused_attention

CONFIG = dict(num_freq_bands=2, max_freq=4.0, depth=1, num_latents=16, latent_dim=64, cross_heads=2,
              cross_dim_head=16, latent_heads=2, latent_dim_head=32, ff_mult=2, text_dim=16, max_text_length=8)


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Every call of F.scaled_dot_product_attention: (q dtype, attn_mask, dropout_p)."""
    calls, real = [], F.scaled_dot_product_attention

    def counting(q, k, v, attn_mask=None, dropout_p=0.0, **kwargs):
        calls.append((q.dtype, attn_mask, dropout_p))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, **kwargs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


def network():
    """An image task and a text task that picks (piggymask) over it, the text task active."""
    torch.manual_seed(0)
    net = Network.new(CONFIG)
    net.start_task("img", "image", 3)
    net.start_task("txt", "text", 4)
    return net


def text_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, CONFIG["max_text_length"], CONFIG["text_dim"], generator=g)
    mask = torch.ones(3, CONFIG["max_text_length"], dtype=torch.bool)
    mask[0, 5:] = False                                   # two padded samples, one full
    mask[1, 2:] = False
    return x, mask


def logits_and_grads(net, x, mask=None, fused=True):
    use_fused_attention(net.model, fused)
    net.model.zero_grad(set_to_none=True)
    logits = net.model(x, mask=mask)
    logits.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in net.model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def assert_same(fused, einsum):
    (lf, gf), (le, ge) = fused, einsum
    torch.testing.assert_close(lf, le, atol=1e-5, rtol=1e-5)
    assert gf.keys() == ge.keys() and gf
    for name in gf:
        torch.testing.assert_close(gf[name], ge[name], atol=1e-5, rtol=1e-4, msg=name)


def test_image_logits_and_gradients_equal_the_einsum_attention(sdpa_calls):
    net = network()
    net.activate("img")
    net.set_trainable("img")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        net.model(x)                                      # fused by default
    assert len(sdpa_calls) == 1 + CONFIG["depth"]         # cross-attention and every latent self-attention
    fused = logits_and_grads(net, x)
    assert len(sdpa_calls) == 2 * (1 + CONFIG["depth"])
    assert_same(fused, logits_and_grads(net, x, fused=False))
    assert len(sdpa_calls) == 2 * (1 + CONFIG["depth"])   # the einsum path does not call it


def test_text_logits_with_padding_equal_the_einsum_attention_and_ignore_the_padding(sdpa_calls):
    net = network()
    net.set_trainable("txt")
    x, mask = text_batch()
    fused = logits_and_grads(net, x, mask)
    assert sdpa_calls[0][1] is not None                   # the cross-attention got the mask
    assert_same(fused, logits_and_grads(net, x, mask, fused=False))

    changed = x.clone()
    changed[~mask] = 100.0 * torch.randn(int((~mask).sum()), x.shape[-1])
    with torch.no_grad():
        torch.testing.assert_close(net.model(changed, mask=mask), fused[0], atol=1e-5, rtol=1e-5)   # einsum
        use_fused_attention(net.model, True)
        torch.testing.assert_close(net.model(changed, mask=mask), fused[0], atol=1e-5, rtol=1e-5)
        # the padded features do matter without the mask, so the check above is one the mask passes
        assert not torch.allclose(net.model(changed), fused[0], atol=1e-3)


def test_bf16_autocast_on_the_cpu_runs_through_the_fused_attention(sdpa_calls):
    net = network()
    x, mask = text_batch()
    with torch.no_grad():
        reference = net.model(x, mask=mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net.model(x, mask=mask)
    assert sdpa_calls[-1][0] == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, atol=5e-2, rtol=5e-2)


def test_state_dict_keys_are_perceiver_pytorchs_and_load_both_ways(monkeypatch):
    with monkeypatch.context() as m:                      # the network as built on perceiver-pytorch's Attention
        m.setattr(perceiver_io, "Attention", pio.Attention)
        original = Network.new(CONFIG)
    assert not any(isinstance(mod, perceiver_io.Attention) for mod in original.model.modules())
    fused = Network.new(CONFIG)
    for net in (original, fused):
        net.start_task("img", "image", 3)
    state = original.model.state_dict()
    assert {k: v.shape for k, v in fused.model.state_dict().items()} == {k: v.shape for k, v in state.items()}
    assert any(k.endswith(".to_kv.projections.image.parametrizations.weight.original") for k in state)
    fused.model.load_state_dict(state)
    cpg.load_masks(fused.model, cpg.get_masks(original.model))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused.model(x), original.model(x), atol=1e-5, rtol=1e-5)


def test_dropout_only_in_training(sdpa_calls):
    attn = perceiver_io.Attention(8, heads=2, dim_head=4)
    x = torch.randn(1, 3, 8)
    attn.eval()
    attn(x)
    attn.train()
    attn(x)
    attn.dropout = 0.25                                   # as a later perceiver-pytorch might set
    attn(x)
    attn.eval()
    attn(x)
    assert [c[2] for c in sdpa_calls] == [0.0, 0.0, 0.25, 0.0]
