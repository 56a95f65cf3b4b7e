//! A translator from a Marian-style encoder-decoder exported to ONNX, run
//! through ONNX Runtime with greedy or beam search.
//!
//! The model directory has HuggingFace Optimum's layout for Marian:
//! `encoder_model.onnx` (`input_ids`, `attention_mask` ->
//! `last_hidden_state`), `decoder_model.onnx` (`input_ids`,
//! `encoder_hidden_states`, `encoder_attention_mask` -> `logits`, the whole
//! prefix each step: no cache), `tokenizer.json` (its post-processor adds
//! `</s>`) and `config.json` (`decoder_start_token_id`, `eos_token_id`,
//! `pad_token_id`, optionally `max_position_embeddings`). The pad token is
//! never generated, as in Marian's generation config.
//!
//! Beam search, exactly (the reference in fixtures/make_tiny_marian.py
//! follows the same rules): scores are sums of log-probabilities in f64;
//! each step the candidates of all live beams are ranked by score, then
//! beam, then token; walking the first `2 * beams`, an end-of-sentence
//! ranked below `beams` is skipped, one ranked within finishes its
//! hypothesis with score `sum / length ^ length_penalty` (length counts the
//! generated tokens with the `</s>`), other tokens extend a live beam until
//! there are `beams`. The search stops once `beams` hypotheses are finished
//! and the best live beam's `sum / length ^ length_penalty` is below the
//! worst of the best `beams` finished; at `max_new_tokens` the live beams
//! are finished as they are. The best finished hypothesis wins (the first
//! finished among equals). Greedy is the first highest logit each step.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::Session;
use ort::value::Tensor;
use tokenizers::Tokenizer;

use super::translate::Translator;
use crate::onnx::environment;

/// What the search needs from `config.json`.
#[derive(Debug, Clone, Copy)]
pub struct Tokens {
    pub start: i64,
    pub eos: i64,
    pub pad: i64,
}

/// Search settings.
#[derive(Debug, Clone, Copy)]
pub struct Search {
    pub beams: usize,
    pub max_new_tokens: usize,
    pub length_penalty: f64,
}

pub struct Seq2Seq {
    dir: PathBuf,
    tokenizer: Tokenizer,
    tokens: Tokens,
    search: Search,
    max_positions: usize,
    sessions: Mutex<Vec<(Session, Session)>>,
}

fn read_config(dir: &Path) -> Result<(Tokens, usize), String> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let id = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_i64())
            .ok_or_else(|| format!("{} has no integer `{k}`", path.display()))
    };
    let pad = id("pad_token_id")?;
    let tokens = Tokens {
        start: id("decoder_start_token_id").unwrap_or(pad),
        eos: id("eos_token_id")?,
        pad,
    };
    let max_positions = v
        .get("max_position_embeddings")
        .and_then(|x| x.as_u64())
        .unwrap_or(512) as usize;
    Ok((tokens, max_positions))
}

impl Seq2Seq {
    /// Open the model in `dir`: its files read and one pair of sessions
    /// created, so that a bad directory fails before any data is read.
    pub fn open(dir: &Path, search: Search) -> Result<Self, String> {
        for f in ["encoder_model.onnx", "decoder_model.onnx", "tokenizer.json"] {
            if !dir.join(f).is_file() {
                return Err(format!(
                    "{} has no {f} (a Marian model exported to ONNX: encoder_model.onnx, decoder_model.onnx, tokenizer.json, config.json)",
                    dir.display()
                ));
            }
        }
        let (tokens, max_positions) = read_config(dir)?;
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| format!("cannot read {}/tokenizer.json: {e}", dir.display()))?;
        if search.beams == 0 {
            return Err("num_beams must be at least 1".into());
        }
        let model = Seq2Seq {
            dir: dir.to_path_buf(),
            tokenizer,
            tokens,
            search,
            max_positions,
            sessions: Mutex::new(Vec::new()),
        };
        let pair = model.open_sessions()?;
        for (session, names) in [
            (&pair.0, &["input_ids", "attention_mask"][..]),
            (
                &pair.1,
                &[
                    "input_ids",
                    "encoder_hidden_states",
                    "encoder_attention_mask",
                ][..],
            ),
        ] {
            for n in names {
                if !session.inputs().iter().any(|i| i.name() == *n) {
                    return Err(format!(
                        "{}: the model has no input `{n}` (Optimum's Marian export names them input_ids, attention_mask, encoder_hidden_states, encoder_attention_mask)",
                        dir.display()
                    ));
                }
            }
        }
        model.sessions.lock().expect("not poisoned").push(pair);
        Ok(model)
    }

    fn open_sessions(&self) -> Result<(Session, Session), String> {
        let env = environment()?;
        let open = |file: &str| -> Result<Session, String> {
            let path = self.dir.join(file);
            Session::builder(env)
                .and_then(|b| Ok(b.with_intra_threads(1)?))
                .and_then(|b| Ok(b.with_deterministic_compute(true)?))
                .and_then(|mut b| b.commit_from_file(&path))
                .map_err(|e| format!("cannot load {}: {e}", path.display()))
        };
        Ok((open("encoder_model.onnx")?, open("decoder_model.onnx")?))
    }

    /// The token ids of `text`'s translation.
    pub fn generate(
        &self,
        sessions: &mut (Session, Session),
        text: &str,
    ) -> Result<Vec<i64>, String> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| format!("cannot tokenize: {e}"))?;
        let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        if ids.len() > self.max_positions {
            // Keep the end-of-sentence the tokenizer added.
            let last = *ids.last().expect("not empty");
            ids.truncate(self.max_positions - 1);
            ids.push(last);
        }
        let s = ids.len();
        let (encoder, decoder) = sessions;
        let hidden: Vec<f32> = {
            let outputs = encoder
                .run(ort::inputs![
                    "input_ids" => Tensor::from_array((vec![1i64, s as i64], ids.clone())).map_err(|e| e.to_string())?,
                    "attention_mask" => Tensor::from_array((vec![1i64, s as i64], vec![1i64; s])).map_err(|e| e.to_string())?,
                ])
                .map_err(|e| format!("encoder: {e}"))?;
            let (_, values) = outputs
                .get("last_hidden_state")
                .ok_or("the encoder has no output `last_hidden_state`")?
                .try_extract_tensor::<f32>()
                .map_err(|e| format!("encoder output: {e}"))?;
            values.to_vec()
        };
        let d = hidden.len() / s.max(1);
        let mut step = |prefixes: &[Vec<i64>]| -> Result<Vec<Vec<f64>>, String> {
            let n = prefixes.len();
            let t = prefixes[0].len();
            let flat: Vec<i64> = prefixes.iter().flatten().copied().collect();
            let mut states = Vec::with_capacity(n * hidden.len());
            for _ in 0..n {
                states.extend_from_slice(&hidden);
            }
            let outputs = decoder
                .run(ort::inputs![
                    "input_ids" => Tensor::from_array((vec![n as i64, t as i64], flat)).map_err(|e| e.to_string())?,
                    "encoder_hidden_states" => Tensor::from_array((vec![n as i64, s as i64, d as i64], states)).map_err(|e| e.to_string())?,
                    "encoder_attention_mask" => Tensor::from_array((vec![n as i64, s as i64], vec![1i64; n * s])).map_err(|e| e.to_string())?,
                ])
                .map_err(|e| format!("decoder: {e}"))?;
            let (_, logits) = outputs
                .get("logits")
                .ok_or("the decoder has no output `logits`")?
                .try_extract_tensor::<f32>()
                .map_err(|e| format!("decoder output: {e}"))?;
            let v = logits.len() / (n * t);
            Ok((0..n)
                .map(|i| {
                    let row = &logits[(i * t + t - 1) * v..(i * t + t) * v];
                    let mut row: Vec<f64> = row.iter().map(|&x| x as f64).collect();
                    if let Some(p) = row.get_mut(self.tokens.pad as usize) {
                        *p = f64::NEG_INFINITY;
                    }
                    row
                })
                .collect())
        };
        match self.search.beams {
            1 => greedy(&mut step, self.tokens, self.search.max_new_tokens),
            _ => beam(&mut step, self.tokens, self.search),
        }
    }

    fn sessions(&self) -> Result<(Session, Session), String> {
        match self.sessions.lock().expect("not poisoned").pop() {
            Some(s) => Ok(s),
            None => self.open_sessions(),
        }
    }
}

impl Translator for Seq2Seq {
    fn translate(&self, texts: &[String]) -> Result<Vec<String>, String> {
        let mut sessions = self.sessions()?;
        let mut out = Vec::with_capacity(texts.len());
        let mut result = Ok(());
        for t in texts {
            match self.generate(&mut sessions, t) {
                Ok(ids) => {
                    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
                    match self.tokenizer.decode(&ids, true) {
                        Ok(s) => out.push(s),
                        Err(e) => {
                            result = Err(format!("cannot decode: {e}"));
                            break;
                        }
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.sessions.lock().expect("not poisoned").push(sessions);
        result.map(|_| out)
    }

    fn describe(&self) -> String {
        format!(
            "onnx {} ({})",
            self.dir.display(),
            match self.search.beams {
                1 => "greedy".to_string(),
                b => format!("beam {b}"),
            }
        )
    }
}

/// The next-token logits of each prefix (pad already at minus infinity).
type Step<'a> = dyn FnMut(&[Vec<i64>]) -> Result<Vec<Vec<f64>>, String> + 'a;

/// The first highest logit each step, until `</s>` or `max_new` tokens.
pub fn greedy(step: &mut Step, tokens: Tokens, max_new: usize) -> Result<Vec<i64>, String> {
    let mut seq = vec![tokens.start];
    for _ in 0..max_new {
        let logits = step(std::slice::from_ref(&seq))?;
        let row = &logits[0];
        let mut best = 0;
        for (i, &x) in row.iter().enumerate() {
            if x > row[best] {
                best = i;
            }
        }
        seq.push(best as i64);
        if best as i64 == tokens.eos {
            break;
        }
    }
    Ok(seq[1..].to_vec())
}

fn log_softmax(row: &[f64]) -> Vec<f64> {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = row.iter().map(|&x| (x - m).exp()).sum();
    let lse = m + sum.ln();
    row.iter().map(|&x| x - lse).collect()
}

/// Beam search by the rules in the module documentation.
pub fn beam(step: &mut Step, tokens: Tokens, search: Search) -> Result<Vec<i64>, String> {
    let k = search.beams;
    let lp = search.length_penalty;
    let norm = |score: f64, len: usize| score / (len as f64).powf(lp);
    let mut live: Vec<(Vec<i64>, f64)> = vec![(vec![tokens.start], 0.0)];
    // (normalized score, order finished, generated tokens)
    let mut done: Vec<(f64, usize, Vec<i64>)> = Vec::new();
    let ranked = |done: &[(f64, usize, Vec<i64>)]| {
        let mut d: Vec<&(f64, usize, Vec<i64>)> = done.iter().collect();
        d.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        d.into_iter()
            .map(|x| (x.0, x.2.clone()))
            .collect::<Vec<_>>()
    };
    let mut stopped = false;
    for _ in 0..search.max_new_tokens {
        let prefixes: Vec<Vec<i64>> = live.iter().map(|(s, _)| s.clone()).collect();
        let logits = step(&prefixes)?;
        let mut cands: Vec<(f64, usize, usize)> = Vec::new();
        for (b, (_, score)) in live.iter().enumerate() {
            for (t, lp_t) in log_softmax(&logits[b]).into_iter().enumerate() {
                if lp_t.is_finite() {
                    cands.push((score + lp_t, b, t));
                }
            }
        }
        cands.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        let mut next: Vec<(Vec<i64>, f64)> = Vec::new();
        for (rank, &(score, b, t)) in cands.iter().take(2 * k).enumerate() {
            let seq = &live[b].0;
            if t as i64 == tokens.eos {
                if rank < k {
                    let mut generated = seq[1..].to_vec();
                    generated.push(tokens.eos);
                    done.push((norm(score, generated.len()), done.len(), generated));
                }
            } else {
                let mut s = seq.clone();
                s.push(t as i64);
                next.push((s, score));
            }
            if next.len() == k {
                break;
            }
        }
        live = next;
        if done.len() >= k {
            let worst = ranked(&done)[k - 1].0;
            let best_live = live
                .iter()
                .map(|(q, s)| norm(*s, q.len() - 1))
                .fold(f64::NEG_INFINITY, f64::max);
            if best_live < worst {
                stopped = true;
                break;
            }
        }
    }
    if !stopped {
        for (seq, score) in &live {
            done.push((norm(*score, seq.len() - 1), done.len(), seq[1..].to_vec()));
        }
    }
    ranked(&done)
        .into_iter()
        .next()
        .map(|(_, s)| s)
        .ok_or_else(|| "the search finished no hypothesis".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated ids and decoded text equal the reference recorded from
    /// ONNX Runtime by fixtures/make_tiny_marian.py, for greedy and beam
    /// search with 2 and 4 beams.
    #[test]
    fn tiny_marian_matches_the_recorded_reference() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/text_augment");
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("tiny_marian_reference.json")).unwrap(),
        )
        .unwrap();
        let max_new = reference["max_new_tokens"].as_u64().unwrap() as usize;
        let mut differ = 0;
        for (name, beams) in [("greedy", 1), ("beam2", 2), ("beam4", 4)] {
            let model = Seq2Seq::open(
                &root.join("tiny_marian"),
                Search {
                    beams,
                    max_new_tokens: max_new,
                    length_penalty: 1.0,
                },
            )
            .expect("the tiny model and ONNX Runtime (scripts/setup.sh)");
            let mut sessions = model.sessions().unwrap();
            let cases = reference["cases"].as_array().unwrap();
            let texts: Vec<String> = cases
                .iter()
                .map(|c| c["text"].as_str().unwrap().to_string())
                .collect();
            for c in cases {
                let text = c["text"].as_str().unwrap();
                let ids = model.generate(&mut sessions, text).unwrap();
                let want: Vec<i64> = serde_json::from_value(c[name]["ids"].clone()).unwrap();
                assert_eq!(ids, want, "{name}: {text}");
                if name == "beam4"
                    && want
                        != serde_json::from_value::<Vec<i64>>(c["greedy"]["ids"].clone()).unwrap()
                {
                    differ += 1;
                }
            }
            model.sessions.lock().unwrap().push(sessions);
            let out = model.translate(&texts).unwrap();
            for (o, c) in out.iter().zip(cases) {
                assert_eq!(o, c[name]["text"].as_str().unwrap(), "{name}");
            }
        }
        assert!(differ >= 1, "beam search made a different choice somewhere");
    }

    #[test]
    fn a_directory_without_a_model_is_refused() {
        let e = Seq2Seq::open(
            Path::new("/nonexistent/model"),
            Search {
                beams: 1,
                max_new_tokens: 8,
                length_penalty: 1.0,
            },
        )
        .err()
        .unwrap();
        assert!(e.contains("has no encoder_model.onnx"), "{e}");
    }
}
