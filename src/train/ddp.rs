//! Data parallelism on burn's modules: a model's gradients and weights as
//! one flat vector in the model's parameter order (what the ranks exchange
//! through [`super::collective`]), and ZeRO stage 1's ownership of
//! parameters.
//!
//! ZeRO stage 1 (`optim.zero = true`): every parameter has one owner rank
//! (largest parameters first, each to the rank owning the fewest values so
//! far, ties to the lower rank). After the gradients are averaged, a rank
//! steps only the parameters it owns, so AdamW's two moments exist only
//! there, and the owners' new weights are gathered by every rank. AdamW
//! (with clipping by each parameter's norm) updates every parameter on its
//! own, so the weights are the same bits as without ZeRO.

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};

use super::collective::{DistEnv, Peer};
use crate::error::Result;

/// A parameter: its number of values.
#[derive(Debug, Clone)]
pub(super) struct ParamInfo {
    pub(super) len: usize,
}

/// The model's float parameters, in its order.
pub(super) fn params<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M) -> Vec<ParamInfo> {
    struct V(Vec<ParamInfo>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.0.push(ParamInfo {
                len: p.shape().num_elements(),
            });
        }
    }
    let mut v = V(Vec::new());
    model.visit(&mut v);
    v.0
}

/// The step's gradients, averaged over the ranks: what every rank steps
/// with.
pub(super) struct Reduced {
    /// The rows of the step, all ranks together.
    pub(super) rows: u64,
    pub(super) loss: f64,
    pub(super) weight: Option<f64>,
    pub(super) grad_norm: f64,
    pub(super) grads: GradientsParams,
    /// Every parameter's averaged gradient, when asked for (under ZeRO
    /// `grads` holds only this rank's): what pruning scores.
    pub(super) all: Option<GradientsParams>,
    /// Seconds spent exchanging gradients (waiting for the slowest rank
    /// included).
    pub(super) exchange_s: f64,
}

/// This rank among the others: its link, and which parameters it owns.
pub(super) struct Ranks {
    pub(super) peer: Peer,
    /// ZeRO stage 1: the optimizer steps only the parameters a rank owns.
    pub(super) sharded: bool,
    params: Vec<ParamInfo>,
    owner: Vec<usize>,
    all: Vec<bool>,
    mine: Vec<bool>,
    others: Vec<bool>,
}

impl Ranks {
    /// Meet the other ranks of `env` (the run `run` on each), and share out
    /// `model`'s parameters when `zero`.
    pub(super) fn join<B: AutodiffBackend, M: AutodiffModule<B>>(
        env: &DistEnv,
        run: &BTreeMap<String, serde_json::Value>,
        model: &M,
        zero: bool,
    ) -> Result<Ranks> {
        let id = serde_json::to_vec(run)?;
        let id = hex::encode(ring::digest::digest(&ring::digest::SHA256, &id));
        let peer = Peer::join(env, &id)?;
        let mut ranks = Ranks {
            peer,
            sharded: zero,
            params: Vec::new(),
            owner: Vec::new(),
            all: Vec::new(),
            mine: Vec::new(),
            others: Vec::new(),
        };
        ranks.reshape(model);
        Ok(ranks)
    }

    /// Shares out `model`'s parameters (again, for a model of new shapes:
    /// a pruned one).
    pub(super) fn reshape<B: AutodiffBackend, M: AutodiffModule<B>>(&mut self, model: &M) {
        let (rank, world) = (self.peer.rank, self.peer.world);
        self.params = params(model);
        self.owner = match self.sharded {
            true => owners(&self.params, world),
            false => vec![rank; self.params.len()],
        };
        self.mine = self.owner.iter().map(|&r| r == rank).collect();
        self.others = self.mine.iter().map(|m| !m).collect();
        self.all = vec![true; self.params.len()];
    }

    /// Every rank starts from the same weights, or none starts.
    pub(super) fn same_weights<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        model: &M,
    ) -> Result<()> {
        let w = flat_weights(model, &self.all);
        let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        self.peer.agree("initial weights", digest.as_ref())
    }

    /// The step's gradients averaged over the ranks, weighted by the `rows`
    /// each saw, with its loss and task weight (`local`: this rank's
    /// gradients, none when it had no rows); `None` when no rank had rows.
    pub(super) fn average<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        model: &M,
        local: Option<&GradientsParams>,
        rows: usize,
        loss: f64,
        weight: Option<f64>,
        all: bool,
    ) -> Result<Option<Reduced>> {
        let started = std::time::Instant::now();
        let (mut flat, has) = flat_grads(model, local, &self.all);
        let n = flat.len();
        flat.push(loss as f32);
        flat.push(weight.unwrap_or(0.0) as f32);
        // Which parameters have a gradient on some rank: the others are not
        // stepped (no decay, no moments), as on one process.
        flat.extend(has.iter().map(|&h| h as u8 as f32));
        let (mean, total) = self.peer.weighted_mean(&flat, rows as f64)?;
        let take: Vec<bool> = self
            .mine
            .iter()
            .zip(&mean[n + 2..])
            .map(|(&mine, &has)| mine && has > 0.0)
            .collect();
        Ok((total > 0.0).then(|| Reduced {
            rows: total as u64,
            loss: mean[n] as f64,
            weight: weight.map(|_| mean[n + 1] as f64),
            grad_norm: norm(&mean[..n]),
            grads: grads_from(model, &mean[..n], &take),
            all: all.then(|| {
                let has: Vec<bool> = mean[n + 2..].iter().map(|&h| h > 0.0).collect();
                grads_from(model, &mean[..n], &has)
            }),
            exchange_s: started.elapsed().as_secs_f64(),
        }))
    }

    /// ZeRO: `model` with the weights the other ranks' owners stepped.
    pub(super) fn gather<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        model: M,
    ) -> Result<M> {
        let parts = self.peer.all_gather(&flat_weights(&model, &self.mine))?;
        let mut cursor = vec![0usize; parts.len()];
        let mut theirs = Vec::new();
        for (info, &r) in self.params.iter().zip(&self.owner) {
            if r != self.peer.rank {
                let c = cursor[r];
                theirs.extend_from_slice(&parts[r][c..c + info.len]);
            }
            cursor[r] += info.len;
        }
        Ok(set_weights(model, &theirs, &self.others))
    }
}

/// The gradients of the parameters where `take` is true, flat, in the
/// model's order (zeros where a parameter has none, or without `grads`),
/// and whether each parameter has one.
pub(super) fn flat_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: Option<&GradientsParams>,
    take: &[bool],
) -> (Vec<f32>, Vec<bool>) {
    struct V<'a> {
        grads: Option<&'a GradientsParams>,
        take: &'a [bool],
        at: usize,
        out: Vec<f32>,
        has: Vec<bool>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for V<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let i = self.at;
            self.at += 1;
            if !self.take[i] {
                return;
            }
            let n = p.shape().num_elements();
            let g = self.grads.and_then(|g| g.get::<B::InnerBackend, D>(p.id));
            self.has.push(g.is_some());
            match g {
                Some(g) => self.out.extend(
                    g.into_data()
                        .convert::<f32>()
                        .into_vec::<f32>()
                        .expect("f32 gradients"),
                ),
                None => self.out.resize(self.out.len() + n, 0.0),
            }
        }
    }
    let mut v = V {
        grads,
        take,
        at: 0,
        out: Vec::new(),
        has: Vec::new(),
    };
    model.visit(&mut v);
    (v.out, v.has)
}

/// The gradients in `flat` (every parameter, the model's order) of the
/// parameters where `take` is true.
pub(super) fn grads_from<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    flat: &[f32],
    take: &[bool],
) -> GradientsParams {
    struct V<'a> {
        flat: &'a [f32],
        take: &'a [bool],
        at: usize,
        offset: usize,
        out: GradientsParams,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for V<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let shape = p.shape();
            let n = shape.num_elements();
            let (i, o) = (self.at, self.offset);
            self.at += 1;
            self.offset += n;
            if self.take[i] {
                let data = TensorData::new(self.flat[o..o + n].to_vec(), shape);
                let device = p.val().device();
                let t = Tensor::<B::InnerBackend, D>::from_data(data, &device);
                self.out.register::<B::InnerBackend, D>(p.id, t);
            }
        }
    }
    let mut v = V {
        flat,
        take,
        at: 0,
        offset: 0,
        out: GradientsParams::new(),
    };
    model.visit(&mut v);
    v.out
}

/// The weights of the parameters where `take` is true, flat.
pub(super) fn flat_weights<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    take: &[bool],
) -> Vec<f32> {
    struct V<'a> {
        take: &'a [bool],
        at: usize,
        out: Vec<f32>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for V<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let i = self.at;
            self.at += 1;
            if self.take[i] {
                self.out.extend(
                    p.val()
                        .into_data()
                        .convert::<f32>()
                        .into_vec::<f32>()
                        .expect("f32 weights"),
                );
            }
        }
    }
    let mut v = V {
        take,
        at: 0,
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out
}

/// The model with the weights of the parameters where `take` is true
/// replaced by `flat` (theirs only, in order).
pub(super) fn set_weights<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: M,
    flat: &[f32],
    take: &[bool],
) -> M {
    struct Set<'a> {
        flat: &'a [f32],
        take: &'a [bool],
        at: usize,
        offset: usize,
    }
    impl<B: AutodiffBackend> ModuleMapper<B> for Set<'_> {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let i = self.at;
            self.at += 1;
            if !self.take[i] {
                return p;
            }
            let (flat, offset) = (self.flat, &mut self.offset);
            p.map(|t| {
                let shape = t.shape();
                let n = shape.num_elements();
                let data = TensorData::new(flat[*offset..*offset + n].to_vec(), shape);
                *offset += n;
                let fresh = Tensor::<B, D>::from_data(data, &t.device());
                match t.is_require_grad() {
                    true => fresh.require_grad(),
                    false => fresh,
                }
            })
        }
    }
    model.map(&mut Set {
        flat,
        take,
        at: 0,
        offset: 0,
    })
}

/// The model with its parameters numbered 0, 1, 2, ... in its order: the
/// same ids on every rank, so that an optimizer state (keyed by id) written
/// by one process is found by another that loads the model's record.
pub(super) fn numbered<B: AutodiffBackend, M: AutodiffModule<B>>(model: M) -> M {
    struct Number(u64);
    impl<B: AutodiffBackend> ModuleMapper<B> for Number {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (_, tensor, mapper) = p.consume();
            self.0 += 1;
            Param::from_mapped_value(ParamId::from(self.0 - 1), tensor, mapper)
        }
    }
    model.map(&mut Number(0))
}

/// The owner rank of every parameter under ZeRO stage 1: largest first,
/// each to the rank that owns the fewest values so far (ties: the lower
/// rank, then the parameter's order).
pub(super) fn owners(params: &[ParamInfo], world: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..params.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(params[i].len), i));
    let mut load = vec![0usize; world];
    let mut owner = vec![0usize; params.len()];
    for i in order {
        let r = (0..world).min_by_key(|&r| (load[r], r)).expect("a rank");
        owner[i] = r;
        load[r] += params[i].len;
    }
    owner
}

/// The L2 norm of a flat gradient.
pub(super) fn norm(flat: &[f32]) -> f64 {
    flat.iter()
        .map(|&g| (g as f64) * (g as f64))
        .sum::<f64>()
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_spreads_the_values_over_the_ranks() {
        let p = |len| ParamInfo { len };
        let params = vec![p(10), p(100), p(60), p(50), p(1)];
        assert_eq!(owners(&params, 1), vec![0; 5]);
        // 100 -> 0; 60 -> 1; 50 -> 1 (60 < 100); 10 -> 0; 1 -> 0 (a tie).
        assert_eq!(owners(&params, 2), vec![0, 0, 1, 1, 0]);
        let o = owners(&params, 4);
        assert_eq!(o, vec![3, 0, 1, 2, 3]);
    }
}
