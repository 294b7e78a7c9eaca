"""One LSTM layer over a whole window with bf16 matrix products and fp32 everything else.

Why: on CPUs with avx512_bf16 (or AMX) oneDNN's bf16 GEMMs run several times faster than fp32
at the LSTM's shapes, but the fused nn.LSTM kernel under CPU autocast does not use them well
(it ran slower than fp32, bench/RESULTS.md). Here the window is written out by hand:

    forward   G_x = X W_ih^T (one GEMM for all T*B characters), then per step
              pre_t = G_x[t] + b + h_{t-1} W_hh^T (a (B x H) @ (H x 4H) GEMM), the gates, c_t, h_t
    backward  per step (newest first) dh_t = dy_t + dG_{t+1} W_hh, dc_t, dG_t; then one GEMM
              each for dW_ih = dG^T X, dW_hh = dG^T H_prev and dX = dG W_ih

Matrix operands are bf16 (oneDNN accumulates in fp32; a product's result is rounded to bf16
once, as under autocast); master weights, biases, the cell state c, the gate pre-activations
and activations, and every pointwise step of the gate arithmetic stay fp32. The parameters are
nn.LSTM's own (`weight_ih_l{k}` [W_ii; W_if; W_ig; W_io] etc.), so a checkpoint does not change.

The backward is one autograd node per layer and window (a torch.autograd.Function), not
autograd over hundreds of per-step nodes: the per-step work is the recurrent GEMM and about
seven pointwise ops into preallocated buffers, and everything that does not depend on the
recurrence (the gate derivatives) is computed for the whole window at once, before the loop.
The bias gradient is one more GEMM (a row of ones times dG), rounded to bf16 once like dW.
"""

from __future__ import annotations

import functools

import torch

from charlstm.model.native import cell_kernels

BF16 = torch.bfloat16


class BF16LSTMWindow(torch.autograd.Function):
    """(x (T,B,I), h0 (B,H), c0 (B,H), w_ih, w_hh, b_ih, b_hh) -> (y (T,B,H), h_T, c_T), in
    ATen ops: the path where the C cell kernels cannot be built (NativeBF16LSTMWindow below)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        wih_b, whh_b = w_ih.to(BF16), w_hh.to(BF16)
        # tanh(z) = 2 sigmoid(2z) - 1: ATen's fp32 tanh goes through MKL's vector math, which is
        # ~50x slower than its sigmoid on this AMD CPU, so the forward runs on copies of the
        # weights whose g rows are doubled (exact in bf16) and takes one sigmoid over all gates
        g_rows = slice(2 * H, 3 * H)
        wih_2g, whh_2g = wih_b.clone(), whh_b.clone()
        wih_2g[g_rows] *= 2
        whh_2g[g_rows] *= 2
        bias = b_ih.detach() + b_hh.detach()
        bias[g_rows] *= 2
        x_b = x.reshape(T * B, -1).to(BF16)
        # the whole window's input projection as one GEMM (bf16 result), and in fp32, a chunk
        # of steps at a time so that it stays in cache, plus the biases
        gx_b = torch.mm(x_b, wih_2g.t()).view(T, B, 4 * H)
        gx = torch.empty(T, B, 4 * H)
        for lo in range(0, T, CHUNK):
            gx[lo : lo + CHUNK].copy_(gx_b[lo : lo + CHUNK]).add_(bias)
        del gx_b
        act = torch.empty(T, B, 4 * H)  # i, f, g, o after their nonlinearities
        c = torch.empty(T + 1, B, H)
        tc = torch.empty(T, B, H)  # tanh(c_t)
        y = torch.empty(T, B, H)
        hb = torch.empty(T + 1, B, H, dtype=BF16)  # h_{t-1} as the recurrent GEMM's operand
        c[0].copy_(c0)
        hb[0].copy_(h0)
        linear, packed = _packed_linear(whh_2g, B)
        pre = torch.empty(B, 4 * H)
        twice_c = torch.empty(B, H)
        sigmoid, mul = torch.sigmoid, torch.mul
        for t in range(T):
            pre.copy_(linear(hb[t], packed)).add_(gx[t])
            a = act[t]
            sigmoid(pre, out=a)
            g = a[:, g_rows].mul_(2).sub_(1)
            mul(a[:, H : 2 * H], c[t], out=c[t + 1])
            c[t + 1].addcmul_(a[:, :H], g)
            mul(c[t + 1], 2, out=twice_c)
            sigmoid(twice_c, out=tc[t]).mul_(2).sub_(1)
            mul(a[:, 3 * H :], tc[t], out=y[t])
            hb[t + 1].copy_(y[t])
        ctx.save_for_backward(x_b, hb, act, c, tc, wih_b, whh_b)
        return y, y[-1].clone(), c[T].clone()

    @staticmethod
    def backward(ctx, dy, dh_last, dc_last):
        x_b, hb, act, c, tc, wih_b, whh_b = ctx.saved_tensors
        T, B, H = tc.shape
        dy = torch.zeros(T, B, H) if dy is None else dy.contiguous()
        # what does not depend on the recurrence, for the whole window (a chunk at a time):
        # dpre_{i,f,g} = dc_t * k_{i,f,g},  dpre_o = dh_t * k_o,  dc_t = carry + dh_t * a_t
        k = torch.empty(T, B, 4 * H)
        a_cell = torch.empty(T, B, H)
        sig_bw = torch.ops.aten.sigmoid_backward.grad_input
        tanh_bw = torch.ops.aten.tanh_backward.grad_input
        for lo in range(0, T, CHUNK):
            w = slice(lo, lo + CHUNK)
            i, f, g, o = (act[w, :, n * H : (n + 1) * H] for n in range(4))
            sig_bw(g, i, grad_input=k[w, :, :H])  # g * i(1-i)
            sig_bw(c[lo : lo + CHUNK][: len(i)], f, grad_input=k[w, :, H : 2 * H])  # c_{t-1} f(1-f)
            tanh_bw(i, g, grad_input=k[w, :, 2 * H : 3 * H])  # i (1-g^2)
            sig_bw(tc[w], o, grad_input=k[w, :, 3 * H :])  # tanh(c_t) o(1-o)
            tanh_bw(o, tc[w], grad_input=a_cell[w])  # o (1-tanh(c_t)^2)
        k_cif = k[..., : 3 * H].view(T, B, 3, H)
        k_o = k[..., 3 * H :]
        forget = act[..., H : 2 * H]
        dgates = torch.empty(T, B, 4 * H, dtype=BF16)  # the GEMMs' operand: bf16 from the start
        d = torch.empty(B, 4 * H)  # one step's gate gradients in fp32
        d_cif, d_o = d[:, : 3 * H].view(B, 3, H), d[:, 3 * H :]
        dh = torch.empty(B, H)
        dc = torch.empty(B, H)
        carry = dc_last.clone() if dc_last is not None else torch.zeros(B, H)
        linear, packed = _packed_linear(whh_b.t().contiguous(), B)
        mul, addcmul = torch.mul, torch.addcmul
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh.copy_(dy[t])
                if dh_last is not None:
                    dh.add_(dh_last)
            else:
                dh.copy_(linear(dgates[t + 1], packed)).add_(dy[t])
            addcmul(carry, dh, a_cell[t], out=dc)
            mul(k_cif[t], dc.unsqueeze(1), out=d_cif)
            mul(k_o[t], dh, out=d_o)
            dgates[t].copy_(d)
            mul(dc, forget[t], out=carry)
        d_x, d_h0, d_wih, d_whh = _window_gradients(dgates, x_b, hb, wih_b, linear, packed)
        d_b = torch.mm(torch.ones(1, T * B, dtype=BF16), dgates.view(T * B, -1)).float().view(-1)
        return d_x, d_h0, carry, d_wih, d_whh, d_b, d_b


#: time steps per slice in whole-window pointwise passes: B x 4H x CHUNK fp32 stays in cache
CHUNK = 16


@functools.cache
def onednn_bf16_linear() -> bool:
    """Whether oneDNN has a bf16 linear on this CPU (avx512bw/vl/dq or avx_ne_convert): on
    one without (an AVX2-only AMD EPYC, say) its weight reorder raises."""
    mkldnn = torch.ops.mkldnn
    supported = getattr(mkldnn, "_is_mkldnn_bf16_supported", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(mkldnn, "_reorder_linear_weight")
        and (supported is None or bool(supported()))
    )


def _packed_linear(weight: torch.Tensor, batch: int):
    """x -> x @ weight.T for a bf16 weight used at every step: oneDNN's linear on the weight
    reordered once into its blocked layout; plain torch.mm (the same product, more slowly)
    where oneDNN has no bf16 linear on this CPU."""
    if onednn_bf16_linear():
        mkldnn = torch.ops.mkldnn
        packed = mkldnn._reorder_linear_weight(weight, batch)
        return (lambda x, w: mkldnn._linear_pointwise(x, w, None, "none", [], "")), packed
    return (lambda x, w: torch.mm(x, w.t())), weight


class NativeBF16LSTMWindow(torch.autograd.Function):
    """BF16LSTMWindow's function with each step's pointwise work fused into one call of the C
    cell kernels (charlstm/model/lstm_cell.c): no whole-window gate passes, no fp32 copy of the
    input projection, the bias gradient summed in fp32 as the steps go."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        cell = cell_kernels()
        T, B, _ = x.shape
        H = w_hh.shape[1]
        wih_b, whh_b = w_ih.to(BF16), w_hh.to(BF16)
        bias = (b_ih.detach() + b_hh.detach()).contiguous()
        x_b = x.reshape(T * B, -1).to(BF16)
        gx = torch.mm(x_b, wih_b.t())  # (T*B, 4H) bf16, read a step's rows at a time
        act = torch.empty(T, B, 4 * H)
        c = torch.empty(T + 1, B, H)
        tc = torch.empty(T, B, H)
        y = torch.empty(T, B, H)
        hb = torch.empty(T + 1, B, H, dtype=BF16)
        c[0].copy_(c0)
        hb[0].copy_(h0)
        linear, packed = _packed_linear(whh_b, B)
        step = _StepPointers(B, H)
        threads, forward = torch.get_num_threads(), cell.lstm_cell_forward
        p_gx, p_bias, p_act, p_c, p_tc, p_y, p_hb = map(_address, (gx, bias, act, c, tc, y, hb))
        for t in range(T):
            lin = linear(hb[t], packed)
            forward(
                threads, B, H, lin.data_ptr(), p_gx + t * step.gates_bf16, p_bias,
                p_c + t * step.cells, p_act + t * step.gates, p_c + (t + 1) * step.cells,
                p_tc + t * step.cells, p_y + t * step.cells, p_hb + (t + 1) * step.cells_bf16,
            )  # fmt: skip
        ctx.save_for_backward(x_b, hb, act, c, tc, wih_b, whh_b)
        return y, y[-1].clone(), c[T].clone()

    @staticmethod
    def backward(ctx, dy, dh_last, dc_last):
        x_b, hb, act, c, tc, wih_b, whh_b = ctx.saved_tensors
        cell = cell_kernels()
        T, B, H = tc.shape
        dy = torch.zeros(T, B, H) if dy is None else dy.contiguous()
        dy_last = dy[T - 1] if dh_last is None else dy[T - 1] + dh_last
        dgates = torch.empty(T, B, 4 * H, dtype=BF16)
        carry = torch.zeros(B, H) if dc_last is None else dc_last.contiguous().clone()
        d_b = torch.zeros(4 * H)
        linear, packed = _packed_linear(whh_b.t().contiguous(), B)
        step = _StepPointers(B, H)
        threads, backward = torch.get_num_threads(), cell.lstm_cell_backward
        p_dy, p_act, p_c, p_tc, p_carry, p_dg, p_db = map(
            _address, (dy, act, c, tc, carry, dgates, d_b)
        )
        for t in range(T - 1, -1, -1):
            last = t == T - 1
            lin = None if last else linear(dgates[t + 1], packed)
            backward(
                threads, B, H, None if last else lin.data_ptr(),
                _address(dy_last) if last else p_dy + t * step.cells,
                p_act + t * step.gates, p_c + t * step.cells, p_tc + t * step.cells,
                p_carry, p_dg + t * step.gates_bf16, p_db,
            )  # fmt: skip
        d_x, d_h0, d_wih, d_whh = _window_gradients(dgates, x_b, hb, wih_b, linear, packed)
        return d_x, d_h0, carry, d_wih, d_whh, d_b, d_b


class _StepPointers:
    """Byte strides of one time step in the window's (T, B, ...) buffers."""

    def __init__(self, batch: int, hidden: int):
        self.gates, self.gates_bf16 = batch * 4 * hidden * 4, batch * 4 * hidden * 2
        self.cells, self.cells_bf16 = batch * hidden * 4, batch * hidden * 2


def _address(tensor: torch.Tensor) -> int:
    assert tensor.is_contiguous()
    return tensor.data_ptr()


def _window_gradients(dgates, x_b, hb, wih_b, linear, packed):
    """The window's big GEMMs from its bf16 gate gradients dG (T, B, 4H): dX = dG W_ih,
    dh_0 = dG_0 W_hh, dW_ih = dG^T X, dW_hh = dG^T H_prev (each rounded to bf16 once, returned
    in fp32)."""
    T, B, _ = dgates.shape
    H = hb.shape[-1]
    dg2 = dgates.view(T * B, -1)
    d_h0 = linear(dgates[0], packed).float()
    d_wih = torch.mm(dg2.t(), x_b).float()
    d_whh = torch.mm(dg2.t(), hb[:T].reshape(T * B, H)).float()
    d_x = torch.mm(dg2, wih_b).float().view(T, B, -1)
    return d_x, d_h0, d_wih, d_whh


def lstm_layer_bf16(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """One LSTM layer over a window (x (T,B,I), state (B,H) each) with bf16 GEMMs:
    returns y (T,B,H), h_T, c_T, all fp32. Uses the C cell kernels where they build (see
    charlstm.model.native), ATen ops otherwise."""
    window = NativeBF16LSTMWindow if cell_kernels() is not None else BF16LSTMWindow
    return window.apply(x.float(), h0.float(), c0.float(), w_ih, w_hh, b_ih, b_hh)


_opaque_layer = None


def training_layer():
    """The layer function training calls: `lstm_layer_bf16`, or once `make_opaque_to_compile`
    has run, the same wrapped by `torch.compiler.disable`."""
    return _opaque_layer or lstm_layer_bf16


def make_opaque_to_compile() -> None:
    """Make the training layer one opaque node to torch.compile (`torch.compiler.disable`, like
    nn.LSTM's kernel); call it before compiling a model that uses the bf16 kernel (the trainer
    does, with --compile). Not done at import because importing torch._dynamo takes ~1.7 s,
    which neither scoring nor an uncompiled training run should pay."""
    global _opaque_layer
    if _opaque_layer is None:
        _opaque_layer = torch.compiler.disable(lstm_layer_bf16)


@torch.no_grad()
def lstm_layer_bf16_inference(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """`lstm_layer_bf16` for scoring only (no gradients): the same arithmetic, step by step,
    but nothing kept for a backward pass. The input projection is computed a block of steps
    at a time and the gates, cell and bf16 h live in one-step (ring) buffers, so memory is the
    output y plus ~4096 rows of the projection, whatever the window and the number of streams.
    Returns y (T,B,H), h_T, c_T, fp32."""
    cell = cell_kernels()
    x, h0, c0 = x.float(), h0.float(), c0.float()
    if cell is None:  # the ATen path; it keeps the window's buffers, then drops them
        return BF16LSTMWindow.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    wih_b, whh_b = w_ih.to(BF16), w_hh.to(BF16)
    bias = (b_ih + b_hh).contiguous()
    y = torch.empty(T, B, H)
    act, tc = torch.empty(B, 4 * H), torch.empty(B, H)  # this step's gates and tanh(c)
    c, hb = torch.empty(2, B, H), torch.empty(2, B, H, dtype=BF16)  # previous / this step
    c[0].copy_(c0)
    hb[0].copy_(h0)
    linear, packed = _packed_linear(whh_b, B)
    step = _StepPointers(B, H)
    threads, forward = torch.get_num_threads(), cell.lstm_cell_forward
    p_bias, p_act, p_tc, p_c, p_hb, p_y = map(_address, (bias, act, tc, c, hb, y))
    block = max(1, INFERENCE_ROWS // B)
    for lo in range(0, T, block):
        gx = torch.mm(x[lo : lo + block].reshape(-1, x.shape[2]).to(BF16), wih_b.t())
        p_gx = _address(gx)
        for t in range(lo, min(T, lo + block)):
            prev, this = t % 2, (t + 1) % 2
            lin = linear(hb[prev], packed)
            forward(
                threads, B, H, lin.data_ptr(), p_gx + (t - lo) * step.gates_bf16, p_bias,
                p_c + prev * step.cells, p_act, p_c + this * step.cells, p_tc,
                p_y + t * step.cells, p_hb + this * step.cells_bf16,
            )  # fmt: skip
    return y, y[-1].clone(), c[T % 2].clone()


#: rows (time steps x streams) of the input projection computed at once when scoring
INFERENCE_ROWS = 4096


class NativeDropout(torch.autograd.Function):
    """F.dropout(x, p) with the mask drawn by the C kernel `dropout_apply` from one 64-bit seed
    (taken from torch's generator, so `torch.manual_seed` and saved RNG states govern it as they
    do F.dropout) and regenerated in the backward instead of stored: one pass over x each way,
    against ATen's Bernoulli draw, mask tensor and multiplies (~15 % of a bf16 `small` step)."""

    @staticmethod
    def forward(ctx, x, p):
        ctx.seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)) % 2**64
        ctx.p = p
        return _apply_dropout(x.contiguous(), p, ctx.seed)

    @staticmethod
    def backward(ctx, grad):
        return _apply_dropout(grad.contiguous(), ctx.p, ctx.seed), None


def _apply_dropout(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    out = torch.empty_like(x)
    threshold = min(round(p * 2**32), 2**32 - 1)
    cell_kernels().dropout_apply(
        torch.get_num_threads(), x.numel(), seed, threshold, 1 / (1 - p), x.data_ptr(),
        out.data_ptr(),
    )  # fmt: skip
    return out


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-time dropout of an fp32 CPU tensor: the C kernel where it builds, else F.dropout."""
    if p == 0:
        return x
    if cell_kernels() is None or x.dtype != torch.float32 or x.device.type != "cpu":
        return torch.nn.functional.dropout(x, p, training=True)
    return NativeDropout.apply(x, p)
