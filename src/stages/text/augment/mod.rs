//! `augment_text`: every sample as itself (`augment = 0`), then augmented
//! copies (`augment = K`, sample id `ID#augK`) made by synonym replacement
//! or back-translation, copy K by `methods[(K - 1) % methods.len()]`.
//!
//! How many copies: `copies` per sample, or, with `[balance]`, per label
//! from the label counts of the whole input (read before the tasks run), so
//! that rare labels reach a target count.
//!
//! Provenance in every row: `augmentation` (null for the sample itself,
//! else the method), `augmented_from` (the source sample's id) and
//! `augment_note`, which says why a copy's text is unchanged (empty text,
//! no synonym, too long, the translator returned it as it was).
//!
//! Synonym copies draw from a generator seeded by (run seed, `ID#augK`,
//! stage). Back-translation is deterministic, so a sample's second
//! back-translated copy repeats its first (said in the note). A batch the
//! translator fails twice rejects its samples (`translation_failed`).

mod methods;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, SchemaRef};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::augment::translate::{Unit, tagged_units};
use crate::error::{Error, Result};
use crate::stages::columns::{batch_with, schema_with};
use crate::stages::{
    BatchContext, BuildContext, BuildError, BuildStage, Built, Fit, FitContext, Stage,
};
pub use methods::{
    BackTranslation, BackTranslationConfig, Method, PosTagger, Synonym, SynonymConfig,
    TranslatorBackend,
};
use methods::{Keyed, TAG_BATCH, build_back_translation, build_synonym, in_chunks};
use serde::{Deserialize, Serialize};

/// Text augmentation: each sample, then augmented copies made by synonym
/// replacement or back-translation, optionally more copies for rare labels.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentTextConfig {
    /// The column holding the text.
    #[serde(default = "default_text_field")]
    pub text_column: String,
    /// Augmented copies per sample, written after the sample itself.
    /// Exclusive with [stages.balance], which decides per label.
    #[serde(default)]
    pub copies: Option<u32>,
    /// The augmentations copy K uses, in turn: copy K takes
    /// `methods[(K - 1) % len]`. By default those with a table, synonym
    /// first.
    #[serde(default)]
    pub methods: Option<Vec<AugmentMethod>>,
    #[serde(default)]
    pub synonym: Option<SynonymConfig>,
    #[serde(default)]
    pub back_translation: Option<BackTranslationConfig>,
    #[serde(default)]
    pub balance: Option<BalanceConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AugmentMethod {
    Synonym,
    BackTranslation,
}

impl AugmentMethod {
    pub fn name(self) -> &'static str {
        match self {
            AugmentMethod::Synonym => "synonym",
            AugmentMethod::BackTranslation => "back_translation",
        }
    }
}

/// More copies for rare labels: a label with `c` samples gets
/// `ceil(target / c) - 1` copies per sample (so it reaches at least the
/// target), at most `max_multiplier - 1`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceConfig {
    /// The column holding the label.
    pub label_column: String,
    /// Rows each label should reach. Exclusive with `target_ratio`.
    #[serde(default)]
    pub target: Option<u64>,
    /// Or this fraction of the largest label's count.
    #[serde(default)]
    pub target_ratio: Option<f64>,
    /// A sample and its copies are at most this many rows.
    #[serde(default = "default_max_multiplier")]
    pub max_multiplier: u32,
}

fn default_max_multiplier() -> u32 {
    10
}

fn default_text_field() -> String {
    "text".into()
}

/// Copies per label, from the input's label counts.
pub type Balance = BalanceConfig;

impl Balance {
    /// The rows each label should reach, given every label's count.
    pub fn target(&self, counts: &HashMap<String, u64>) -> u64 {
        match (self.target, self.target_ratio) {
            (Some(t), _) => t,
            (None, Some(r)) => {
                let max = counts.values().copied().max().unwrap_or(0);
                (r * max as f64).ceil() as u64
            }
            (None, None) => counts.values().copied().max().unwrap_or(0),
        }
    }

    /// Copies per sample of each label: `ceil(target / count) - 1`, at most
    /// `max_multiplier - 1`.
    pub fn copies(&self, counts: &HashMap<String, u64>) -> HashMap<String, u32> {
        let target = self.target(counts);
        counts
            .iter()
            .map(|(label, &c)| {
                let n = target.div_ceil(c.max(1)).saturating_sub(1);
                let n = n.min(self.max_multiplier.saturating_sub(1) as u64) as u32;
                (label.clone(), n)
            })
            .collect()
    }
}

pub struct AugmentText {
    text_column: String,
    methods: Vec<Method>,
    copies: u32,
    balance: Option<(Balance, Arc<HashMap<String, u32>>)>,
}

/// One output copy's text, or why the sample is rejected.
enum Made {
    Text(String, Option<String>),
    Failed(String),
}

impl AugmentText {
    pub fn new(
        text_column: String,
        methods: Vec<Method>,
        copies: u32,
        balance: Option<Balance>,
    ) -> Self {
        AugmentText {
            text_column,
            methods,
            copies,
            balance: balance.map(|b| (b, Arc::new(HashMap::new()))),
        }
    }

    /// The label column whose counts the stage needs before it runs.
    pub fn balance(&self) -> Option<&Balance> {
        self.balance.as_ref().map(|(b, _)| b)
    }

    /// The stage with the input's label counts.
    pub fn with_counts(&self, counts: &HashMap<String, u64>) -> AugmentText {
        AugmentText {
            text_column: self.text_column.clone(),
            methods: self.methods.clone(),
            copies: self.copies,
            balance: self
                .balance
                .as_ref()
                .map(|(b, _)| (b.clone(), Arc::new(b.copies(counts)))),
        }
    }

    fn copies_of(&self, label: Option<&str>) -> u32 {
        match &self.balance {
            None => self.copies,
            Some((_, per)) => label.and_then(|l| per.get(l)).copied().unwrap_or(0),
        }
    }
}

/// Build the stage from its config: WordNet read, the translator started
/// and probed, every key checked, before any data is read.
pub fn build(cfg: &AugmentTextConfig) -> std::result::Result<AugmentText, Keyed> {
    let keyed = |k: &str, m: String| BuildError::new(k, m);
    let kinds: Vec<AugmentMethod> = match &cfg.methods {
        Some(m) if m.is_empty() => {
            return Err(keyed("methods", "list at least one method".into()));
        }
        Some(m) => m.clone(),
        None => {
            let mut m = Vec::new();
            if cfg.synonym.is_some() {
                m.push(AugmentMethod::Synonym);
            }
            if cfg.back_translation.is_some() {
                m.push(AugmentMethod::BackTranslation);
            }
            if m.is_empty() {
                return Err(keyed(
                    "type",
                    "augment_text needs a method: add [stages.synonym] or [stages.back_translation], or set methods".into(),
                ));
            }
            m
        }
    };
    let mut methods = Vec::new();
    for kind in &kinds {
        // A method listed twice is built once.
        if let Some(m) = methods.iter().find(|m: &&Method| m.kind() == *kind) {
            methods.push(m.clone());
            continue;
        }
        methods.push(match kind {
            AugmentMethod::Synonym => {
                let s = cfg.synonym.clone().unwrap_or_default();
                Method::Synonym(Arc::new(build_synonym(&s)?))
            }
            AugmentMethod::BackTranslation => {
                let b = cfg.back_translation.clone().unwrap_or_default();
                Method::BackTranslation(Arc::new(build_back_translation(&b)?))
            }
        });
    }
    let balance = match &cfg.balance {
        None => None,
        Some(b) => {
            if cfg.copies.is_some() {
                return Err(keyed(
                    "copies",
                    "set either `copies` or [stages.balance], which decides copies per label"
                        .into(),
                ));
            }
            match (b.target, b.target_ratio) {
                (Some(_), Some(_)) => {
                    return Err(keyed(
                        "balance.target_ratio",
                        "set either target or target_ratio".into(),
                    ));
                }
                (Some(0), _) => {
                    return Err(keyed("balance.target", "target must be at least 1".into()));
                }
                (_, Some(r)) if !(r > 0.0 && r <= 1.0) => {
                    return Err(keyed(
                        "balance.target_ratio",
                        "target_ratio must be above 0 and at most 1 (of the largest label)".into(),
                    ));
                }
                _ => {}
            }
            if b.max_multiplier < 1 {
                return Err(keyed(
                    "balance.max_multiplier",
                    "max_multiplier must be at least 1 (the sample itself)".into(),
                ));
            }
            Some(b.clone())
        }
    };
    let copies = cfg.copies.unwrap_or(1);
    if balance.is_none() && copies == 0 {
        return Err(keyed(
            "copies",
            "copies must be at least 1 (leave the stage out for none)".into(),
        ));
    }
    Ok(AugmentText::new(
        cfg.text_column.clone(),
        methods,
        copies,
        balance,
    ))
}

impl Stage for AugmentText {
    fn name(&self) -> &str {
        "augment_text"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        match input.field_with_name(&self.text_column) {
            Ok(f) if f.data_type() == &DataType::Utf8 => {}
            _ => {
                return Err(Error::Config(format!(
                    "augment_text reads the text column `{}`, which the input does not have as text",
                    self.text_column
                )));
            }
        }
        if let Some(b) = self.balance() {
            match input.field_with_name(&b.label_column) {
                Ok(f) if f.data_type() == &DataType::Utf8 => {}
                _ => {
                    return Err(Error::Config(format!(
                        "balance.label_column `{}` is not a column of the input; list it in the input's `columns`",
                        b.label_column
                    )));
                }
            }
        }
        if input.field_with_name("augment").is_ok() {
            return Err(Error::Config(
                "the input is already augmented (it has an `augment` column): one augmenting stage per pipeline".into(),
            ));
        }
        Ok(schema_with(
            input,
            &[],
            &[
                Field::new("augment", DataType::UInt32, false),
                Field::new("augmentation", DataType::Utf8, true),
                Field::new("augmented_from", DataType::Utf8, true),
                Field::new("augment_note", DataType::Utf8, true),
            ],
        ))
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| Error::Internal(format!("augment_text: no `{name}` column")))
        };
        let ids = col("sample_id")?.as_string::<i32>().clone();
        let texts = col(&self.text_column)?.as_string::<i32>().clone();
        let labels = match self.balance() {
            Some(b) => Some(col(&b.label_column)?.as_string::<i32>().clone()),
            None => None,
        };
        let rows = batch.num_rows();
        let text = |r: usize| if texts.is_null(r) { "" } else { texts.value(r) };
        // (row, copy K) of every output row, originals included.
        let mut out_rows: Vec<(usize, u32)> = Vec::new();
        for r in 0..rows {
            let label = labels
                .as_ref()
                .and_then(|l| (!l.is_null(r)).then(|| l.value(r)));
            let n = self.copies_of(label);
            out_rows.extend((0..=n).map(|k| (r, k)));
        }
        let method_of = |k: u32| &self.methods[(k as usize - 1) % self.methods.len()];
        // The rows with a copy made by `kind`, each once.
        let rows_for = |kind: AugmentMethod| {
            let mut rows: Vec<usize> = out_rows
                .iter()
                .filter(|&&(_, k)| k > 0 && method_of(k).kind() == kind)
                .map(|&(r, _)| r)
                .collect();
            rows.dedup();
            rows
        };
        let copy_id = |r: usize, k: u32| format!("{}#aug{k}", ids.value(r));

        // Back-translations, once per sample that has a back-translated copy.
        let mut bt_made: HashMap<usize, Made> = HashMap::new();
        if let Some(bt) = self.methods.iter().find_map(|m| match m {
            Method::BackTranslation(b) => Some(b),
            _ => None,
        }) {
            let wanted = rows_for(AugmentMethod::BackTranslation);
            let mut send: Vec<usize> = Vec::new();
            for r in wanted {
                let t = text(r);
                let chars = t.chars().count();
                if t.trim().is_empty() {
                    bt_made.insert(r, Made::Text(t.into(), Some("empty text".into())));
                } else if chars > bt.max_chars {
                    bt_made.insert(
                        r,
                        Made::Text(
                            t.into(),
                            Some(format!(
                                "too long to translate ({chars} characters, max_chars = {})",
                                bt.max_chars
                            )),
                        ),
                    );
                } else {
                    send.push(r);
                }
            }
            let inputs: Vec<String> = send.iter().map(|&r| text(r).to_string()).collect();
            let results = in_chunks(bt.translator.as_ref(), &inputs, bt.batch_size);
            for (r, res) in send.into_iter().zip(results) {
                let made = match res {
                    Ok(t) if t.trim().is_empty() => Made::Text(
                        text(r).into(),
                        Some("the translator returned nothing".into()),
                    ),
                    Ok(t) if t == text(r) => Made::Text(
                        t,
                        Some("back-translation returned the text unchanged".into()),
                    ),
                    Ok(t) => Made::Text(t, None),
                    Err(e) => Made::Failed(e),
                };
                bt_made.insert(r, made);
            }
        }

        // Parts of speech of the texts that get synonym copies.
        let mut tags: HashMap<usize, std::result::Result<Vec<Unit>, String>> = HashMap::new();
        if let Some(tagger) = self.methods.iter().find_map(|m| match m {
            Method::Synonym(s) => s.tagger.as_ref(),
            _ => None,
        }) {
            let wanted = rows_for(AugmentMethod::Synonym);
            let texts: Vec<String> = wanted.iter().map(|&r| text(r).to_string()).collect();
            let tagged = in_chunks(tagger.as_ref(), &texts, TAG_BATCH);
            tags.extend(
                wanted
                    .into_iter()
                    .zip(tagged.into_iter().map(|t| t.map(|l| tagged_units(&l)))),
            );
        }

        // Synonym copies, in parallel, each from its own generator.
        let seeds: Vec<u64> = out_rows
            .iter()
            .map(|&(r, k)| match k {
                0 => 0,
                k => cx.sample_seed(&copy_id(r, k)),
            })
            .collect();
        let made: Vec<Option<Made>> = out_rows
            .par_iter()
            .zip(seeds.par_iter())
            .map(|(&(r, k), &seed)| {
                if k == 0 {
                    return None;
                }
                match method_of(k) {
                    Method::Synonym(s) => {
                        let mut rng = ChaCha8Rng::seed_from_u64(seed);
                        let (units, tag_note) = match tags.get(&r) {
                            Some(Ok(u)) => (Some(u.as_slice()), None),
                            Some(Err(e)) => (
                                None,
                                Some(format!("parts of speech unknown (the tagger failed: {e})")),
                            ),
                            None => (None, None),
                        };
                        Some(match s.replacer.replace(text(r), units, &mut rng) {
                            Ok((t, _)) => Made::Text(t, tag_note),
                            Err(note) => Made::Text(text(r).into(), Some(note)),
                        })
                    }
                    Method::BackTranslation(_) => None,
                }
            })
            .collect();

        // Samples whose translation failed are rejected whole.
        let mut failed = vec![false; rows];
        for (r, m) in &bt_made {
            if let Made::Failed(e) = m {
                failed[*r] = true;
                cx.reject(
                    &batch,
                    *r,
                    "translation_failed",
                    format!("back-translation failed: {e}"),
                )?;
            }
        }
        let mut take = Vec::new();
        let mut sample_ids = Vec::new();
        let mut new_texts: Vec<Option<String>> = Vec::new();
        let mut augment = Vec::new();
        let mut augmentation: Vec<Option<&str>> = Vec::new();
        let mut from: Vec<Option<String>> = Vec::new();
        let mut notes: Vec<Option<String>> = Vec::new();
        // The first back-translated copy of each row, for the repeat note.
        let mut first_bt: HashMap<usize, u32> = HashMap::new();
        for (i, &(r, k)) in out_rows.iter().enumerate() {
            if failed[r] {
                continue;
            }
            take.push(r as u32);
            augment.push(k);
            if k == 0 {
                sample_ids.push(ids.value(r).to_string());
                new_texts.push((!texts.is_null(r)).then(|| texts.value(r).to_string()));
                augmentation.push(None);
                from.push(None);
                notes.push(None);
                continue;
            }
            sample_ids.push(copy_id(r, k));
            let method = method_of(k);
            augmentation.push(Some(method.kind().name()));
            from.push(Some(ids.value(r).to_string()));
            let (t, note) = match (method, &made[i], bt_made.get(&r)) {
                (Method::Synonym(_), Some(Made::Text(t, n)), _) => (t.clone(), n.clone()),
                (Method::BackTranslation(_), _, Some(Made::Text(t, n))) => {
                    let first = *first_bt.entry(r).or_insert(k);
                    let note = match first == k {
                        true => n.clone(),
                        false => Some(format!(
                            "back-translation is deterministic: the same text as copy {first}"
                        )),
                    };
                    (t.clone(), note)
                }
                _ => return Err(Error::Internal("augment_text: a copy was not made".into())),
            };
            new_texts.push(Some(t));
            notes.push(note);
        }
        let taken = arrow::compute::take_record_batch(&batch, &UInt32Array::from(take))?;
        let schema = self.output_schema(&batch.schema())?;
        let added: Vec<(&str, ArrayRef)> = vec![
            ("sample_id", Arc::new(StringArray::from(sample_ids))),
            (
                self.text_column.as_str(),
                Arc::new(StringArray::from(new_texts)),
            ),
            ("augment", Arc::new(UInt32Array::from(augment))),
            ("augmentation", Arc::new(StringArray::from(augmentation))),
            ("augmented_from", Arc::new(StringArray::from(from))),
            ("augment_note", Arc::new(StringArray::from(notes))),
        ];
        batch_with(&taken, &schema, added)
    }

    fn report(&self) -> Option<String> {
        let methods: Vec<String> = self
            .methods
            .iter()
            .map(|m| match m {
                Method::Synonym(s) => match &s.tagger {
                    Some(t) => format!("synonym (WordNet, parts of speech from {})", t.describe()),
                    None => "synonym (WordNet)".to_string(),
                },
                Method::BackTranslation(b) => {
                    format!("back_translation ({})", b.translator.describe())
                }
            })
            .collect();
        let copies = match &self.balance {
            None => format!("{} copies per sample", self.copies),
            Some((b, per)) => {
                let mut v: Vec<String> = per.iter().map(|(l, n)| format!("{l}: {n}")).collect();
                v.sort();
                format!("copies per `{}` label {{{}}}", b.label_column, v.join(", "))
            }
        };
        Some(format!("augment_text: {}; {copies}", methods.join(", ")))
    }
}

impl BuildStage for AugmentTextConfig {
    fn build(&self, cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        if cx.after_a("tokenize") {
            return Err(BuildError::new(
                "type",
                "augment_text works on text: put it before the tokenize stage",
            ));
        }
        let stage = build(self)?;
        if stage.balance().is_none() {
            return Ok(Built::Ready(Arc::new(stage)));
        }
        stage
            .output_schema(cx.input)
            .map_err(|e| BuildError::new("balance.label_column", e))?;
        Ok(Built::Fit(Arc::new(CountLabels(stage))))
    }
}

/// `augment_text` with `[stages.balance]`: the copies each label gets
/// depend on the label counts of the whole input, counted first (null
/// labels are not counted).
struct CountLabels(AugmentText);

impl CountLabels {
    fn column(&self) -> &str {
        self.0.balance().map_or("", |b| b.label_column.as_str())
    }
}

impl Fit for CountLabels {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        self.0.output_schema(input)
    }

    fn describe(&self, _cx: &FitContext) -> String {
        format!("counting `{}` labels to balance them", self.column())
    }

    fn fit(
        &self,
        batches: &mut (dyn Iterator<Item = RecordBatch> + Send),
        _cx: &FitContext,
    ) -> Result<Arc<dyn Stage>> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for batch in batches {
            if let Some(col) = batch
                .column_by_name(self.column())
                .and_then(|c| c.as_string_opt::<i32>())
            {
                for label in col.iter().flatten() {
                    *counts.entry(label.to_string()).or_default() += 1;
                }
            }
        }
        Ok(Arc::new(self.0.with_counts(&counts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_brings_rare_labels_to_the_target() {
        let counts: HashMap<String, u64> = [
            ("a".into(), 100),
            ("b".into(), 30),
            ("c".into(), 3),
            ("d".into(), 1),
        ]
        .into();
        let b = Balance {
            label_column: "label".into(),
            target: None,
            target_ratio: Some(1.0),
            max_multiplier: 10,
        };
        let per = b.copies(&counts);
        // a: already there; b: 30 * 4 = 120 >= 100; c: capped at 9 copies;
        // d: capped too.
        assert_eq!(per["a"], 0);
        assert_eq!(per["b"], 3);
        assert_eq!(per["c"], 9);
        assert_eq!(per["d"], 9);
        let b = Balance {
            target: Some(12),
            target_ratio: None,
            ..b
        };
        let per = b.copies(&counts);
        assert_eq!((per["a"], per["b"], per["c"], per["d"]), (0, 0, 3, 9));
        // Each label reaches the target unless capped.
        for (l, &c) in &counts {
            let rows = c * (1 + per[l] as u64);
            assert!(rows >= 12 || per[l] == 9, "{l}: {rows}");
        }
    }
}
