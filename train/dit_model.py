"""A small DiT in the public DiT checkpoint layout, plus the DDPM maths used to train it.

Module names match the public DiT state dict:
  x_embedder.proj, t_embedder.mlp.{0,2}, y_embedder.embedding_table, pos_embed,
  blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2,adaLN_modulation.1},
  final_layer.{norm_final,linear,adaLN_modulation.1}
Conventions (the runtime must follow the same ones):
  - timestep embedding: t in 0..999 (not scaled), freqs = exp(-ln(10000) * k / 128) for
    k = 0..127, embedding = [cos(t * freqs), sin(t * freqs)] (cos first), 256 wide;
  - patch tokens in row-major (row, col) order; pos_embed is a fixed 2-D sin-cos table saved in
    the file as [1, T, hidden];
  - adaLN chunks: (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp),
    modulate(x) = LN(x) * (1 + scale) + shift; the final layer has (shift, scale);
  - final linear output per token is laid out [p, q, c] (p = row in patch, q = column,
    c = channel, out_channels = 2 * in_channels: eps then the variance interpolation value v);
  - LayerNorms have no affine parameters, eps 1e-6; GELU is the tanh approximation.
"""

import json
import math
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def sincos_1d(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim, grid_size):
    """[grid_size^2, dim], tokens row-major; as in the public DiT tables, the first half
    encodes the column index and the second half the row index, each [sin..., cos...]."""
    rows, cols = np.meshgrid(np.arange(grid_size, dtype=np.float64),
                             np.arange(grid_size, dtype=np.float64), indexing="ij")
    return np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)


def timestep_embedding(t, dim=256, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    def __init__(self, patch, in_ch, hidden):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, hidden, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden, freq_size=256):
        super().__init__()
        self.freq_size = freq_size
        self.mlp = nn.Sequential(nn.Linear(freq_size, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.freq_size))


class LabelEmbedder(nn.Module):
    """num_classes + 1 rows; row num_classes is the null class used for guidance."""

    def __init__(self, num_classes, hidden, dropout_prob):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y, train):
        if train and self.dropout_prob > 0:
            drop = torch.rand(y.shape[0]) < self.dropout_prob
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return self.embedding_table(y)


class Attention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, hidden * 3, bias=True)
        self.proj = nn.Linear(hidden, hidden, bias=True)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        out = att.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, hidden, mlp_hidden):
        super().__init__()
        self.fc1 = nn.Linear(hidden, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, hidden)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x, c):
        s_msa, sc_msa, g_msa, s_mlp, sc_mlp, g_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), s_msa, sc_msa))
        return x + g_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), s_mlp, sc_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden, patch, out_ch):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_ch)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        h, p, cin = cfg["hidden_size"], cfg["patch_size"], cfg["in_channels"]
        self.out_channels = cin * 2 if cfg["learn_sigma"] else cin
        grid = cfg["input_size"] // p
        self.x_embedder = PatchEmbed(p, cin, h)
        self.t_embedder = TimestepEmbedder(h, cfg["frequency_embedding_size"])
        self.y_embedder = LabelEmbedder(cfg["num_classes"], h, cfg["class_dropout_prob"])
        pos = torch.from_numpy(sincos_2d(h, grid)).float().unsqueeze(0)
        self.pos_embed = nn.Parameter(pos, requires_grad=False)
        self.blocks = nn.ModuleList(
            [DiTBlock(h, cfg["num_heads"], cfg["mlp_ratio"]) for _ in range(cfg["depth"])])
        self.final_layer = FinalLayer(h, p, self.out_channels)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(blk.adaLN_modulation[1].weight)
            nn.init.zeros_(blk.adaLN_modulation[1].bias)
        for m in (self.final_layer.adaLN_modulation[1], self.final_layer.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def unpatchify(self, x):
        p, c = self.cfg["patch_size"], self.out_channels
        g = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x, t, y, train=False):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, train)
        for blk in self.blocks:
            x = blk(x, c)
        return self.unpatchify(self.final_layer(x, c))


class Diffusion:
    """DDPM, linear betas 1e-4..0.02 over 1000 steps, eps-prediction, learned-range variance."""

    def __init__(self, steps=1000):
        b = np.linspace(1e-4, 0.02, steps, dtype=np.float64)
        ab = np.cumprod(1.0 - b)
        ab_prev = np.append(1.0, ab[:-1])
        post_var = b * (1.0 - ab_prev) / (1.0 - ab)
        t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        self.steps = steps
        self.betas, self.alphas_cumprod = t(b), t(ab)
        self.sqrt_ab, self.sqrt_1m_ab = t(np.sqrt(ab)), t(np.sqrt(1.0 - ab))
        self.post_logvar = t(np.log(np.append(post_var[1], post_var[1:])))
        self.post_c0 = t(b * np.sqrt(ab_prev) / (1.0 - ab))
        self.post_ct = t((1.0 - ab_prev) * np.sqrt(1.0 - b) / (1.0 - ab))
        self.log_betas = t(np.log(b))

    @staticmethod
    def _g(a, t):
        return a[t].view(-1, 1, 1, 1)

    def q_sample(self, x0, t, noise):
        return self._g(self.sqrt_ab, t) * x0 + self._g(self.sqrt_1m_ab, t) * noise

    def losses(self, model, x0, y, min_snr_gamma=0.0):
        """Returns (loss, mse, vb): eps MSE plus the VLB term for the learned variance (the
        VLB sees the predicted mean with stop-gradient, so it only trains the variance).
        With min_snr_gamma > 0 each sample's eps MSE is weighted by min(SNR, gamma) / SNR
        (Min-SNR weighting: less weight on the nearly clean timesteps); mse is unweighted."""
        n = x0.shape[0]
        t = torch.randint(0, self.steps, (n,))
        noise = torch.randn_like(x0)
        xt = self.q_sample(x0, t, noise)
        out = model(xt, t, y, train=True)
        eps, v = out[:, :3], out[:, 3:]
        mse = ((eps - noise) ** 2).mean(dim=(1, 2, 3))
        vb = self.vb_bits(x0, xt, t, eps.detach(), v)
        w = torch.ones_like(mse)
        if min_snr_gamma > 0:
            snr = self.alphas_cumprod[t] / (1 - self.alphas_cumprod[t])
            w = snr.clamp(max=min_snr_gamma) / snr
        return (w * mse + vb).mean(), mse.mean(), vb.mean()

    def model_logvar(self, v, t):
        frac = (v + 1) / 2
        return frac * self._g(self.log_betas, t) + (1 - frac) * self._g(self.post_logvar, t)

    def vb_bits(self, x0, xt, t, eps, v):
        pred_x0 = (xt - self._g(self.sqrt_1m_ab, t) * eps) / self._g(self.sqrt_ab, t)
        mean_p = self._g(self.post_c0, t) * pred_x0 + self._g(self.post_ct, t) * xt
        mean_q = self._g(self.post_c0, t) * x0 + self._g(self.post_ct, t) * xt
        logvar_p = self.model_logvar(v, t)
        logvar_q = self._g(self.post_logvar, t)
        kl = 0.5 * (-1.0 + logvar_p - logvar_q + torch.exp(logvar_q - logvar_p)
                    + (mean_q - mean_p) ** 2 * torch.exp(-logvar_p))
        kl = kl.mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_loglik(x0, mean_p, 0.5 * logvar_p)
        nll = nll.mean(dim=(1, 2, 3)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)


def _std_normal_cdf(x):
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_loglik(x, mean, log_scale):
    """log P(x) for x in [-1, 1] quantised to 256 levels, under N(mean, exp(log_scale)^2)."""
    inv = torch.exp(-log_scale)
    cdf_hi = _std_normal_cdf(inv * (x - mean + 1.0 / 255.0))
    cdf_lo = _std_normal_cdf(inv * (x - mean - 1.0 / 255.0))
    log_hi = torch.log(cdf_hi.clamp(min=1e-12))
    log_1m_lo = torch.log((1.0 - cdf_lo).clamp(min=1e-12))
    mid = torch.log((cdf_hi - cdf_lo).clamp(min=1e-12))
    return torch.where(x < -0.999, log_hi, torch.where(x > 0.999, log_1m_lo, mid))


@torch.no_grad()
def ddim_sample(model, diffusion, labels, noise, steps=50, cfg_scale=4.0):
    """Deterministic DDIM (eta 0) over timesteps 0, 1000/steps, ...; guidance on eps only."""
    null = torch.full_like(labels, model.cfg["num_classes"])
    ts = list(range(0, diffusion.steps, diffusion.steps // steps))[::-1]
    x = noise
    for i, t in enumerate(ts):
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        out = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null]))
        e_c, e_u = out[:, :3].chunk(2)
        eps = e_u + cfg_scale * (e_c - e_u)
        ab = diffusion.alphas_cumprod[t]
        ab_prev = diffusion.alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    return x


_DT = {torch.float32: ("F32", np.float32), torch.float16: ("F16", np.float16)}


def save_safetensors(path, tensors, metadata):
    """Minimal safetensors writer: u64 LE header length, JSON header, raw LE tensor data."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        code, npdt = _DT[t.dtype]
        raw = t.numpy().astype(npdt).astype(np.dtype(npdt).newbyteorder("<")).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = metadata
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    codes = {"F32": np.float32, "F16": np.float16}
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype=np.dtype(codes[h["dtype"]]).newbyteorder("<"))
        out[name] = torch.from_numpy(arr.astype(np.float32).reshape(h["shape"]))
    return out, meta
