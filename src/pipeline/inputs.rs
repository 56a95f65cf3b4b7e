//! Input resolution: each `[[inputs]]` entry checked against the others
//! and its files listed (a folder walked, a glob expanded, sorted), the kind
//! of dataset the inputs make (text, images, audio or both), the class
//! names, and the schema the readers produce. Reads no data.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use crate::config::{ConfigSource, PipelineConfig};
use crate::error::Result;
use crate::schema::{self, KindSchema};
use crate::sources::input::{InputFormat, LabelSource};
use crate::sources::media::{
    AlsoFile, Media, MediaSpec, folder_classes, media_files, media_record_schema, walk_media,
};
use crate::sources::{self, InputSpec};
use crate::storage;

/// An input with its files, sorted.
#[derive(Debug, Clone)]
pub struct ResolvedInput {
    pub spec: InputSpec,
    pub files: Vec<String>,
    /// The folder the input's ids are relative to: the folder given, or
    /// the part of the path or glob before its first wildcard, cut back to
    /// a folder (`data/` of `data/*.jsonl` and of `data/docs.jsonl`).
    pub root: String,
    /// What ids of this input start with: `NAME/` when the pipeline has
    /// several inputs (the input's `name`, else its index) or the input
    /// is named, else nothing.
    pub prefix: String,
}

impl ResolvedInput {
    /// The name of one of the input's files in sample ids and `source`:
    /// its path below the input's root, after the input's prefix. The same
    /// corpus gets the same names from any directory, mount or bucket.
    pub fn name_of(&self, file: &str) -> String {
        let rel = Path::new(file)
            .strip_prefix(&self.root)
            .ok()
            .and_then(|p| p.to_str())
            .map(str::to_string)
            .or_else(|| file.strip_prefix(&self.root).map(str::to_string))
            .unwrap_or_else(|| file.to_string());
        format!("{}{}", self.prefix, rel.trim_start_matches('/'))
    }
}

/// What the inputs make together.
pub struct Inputs {
    pub inputs: Vec<ResolvedInput>,
    /// What the records carry besides text: images or audio.
    pub media: Option<Media>,
    /// Multimodal records: the second file each carries (audio).
    pub also: Option<Media>,
    /// Class names of the `label` column, in id order.
    pub classes: Vec<String>,
    /// The dataset kind: what `schemas/` promises about the output.
    pub kind: &'static KindSchema,
    /// What the readers produce.
    pub record_schema: SchemaRef,
}

/// Check and list the pipeline's inputs. `audio_stage` is the index of the
/// first stage that works on audio, if any: folders and tar shards are then
/// read as audio.
pub fn resolve(
    source: &ConfigSource,
    config: &PipelineConfig,
    audio_stage: Option<usize>,
) -> Result<Inputs> {
    if config.inputs.is_empty() {
        return Err(source.error("inputs", "the pipeline has no [[inputs]]"));
    }
    let mut inputs = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    // Folders and tar shards are audio when an audio stage reads them.
    let audio_stages = audio_stage.is_some();
    // The media of the pipeline, and the input that decided it.
    let mut pipeline_media: Option<(Option<Media>, Option<Media>, usize)> = None;
    let (mut has_label, mut has_caption) = (false, false);
    let mut classes: Option<(Vec<String>, usize)> = None;
    for (i, input) in config.inputs.iter().enumerate() {
        let key = |k: &str| format!("inputs[{i}].{k}");
        storage::check(&input.path).map_err(|m| source.error(&key("path"), m))?;
        let is_folder = match storage::is_url(&input.path) {
            // A prefix with no wildcard and no file extension is a folder.
            true => {
                !input.path.contains(['*', '?', '['])
                    && InputFormat::from_path(&input.path).is_none()
            }
            false => Path::new(&input.path).is_dir(),
        };
        let format = match input.format.or_else(|| match is_folder {
            true if audio_stages => Some(InputFormat::Audio),
            true => Some(InputFormat::Images),
            false => InputFormat::from_path(&input.path),
        }) {
            Some(f) => f,
            None => {
                return Err(source.error(
                    &key("format"),
                    format!("cannot tell the format of `{}`; set format = \"jsonl\" | \"text\" | \"csv\" | \"parquet\" | \"images\" | \"audio\" | \"tar\"", input.path),
                ));
            }
        };
        if input.delimiter.len() != 1 {
            return Err(source.error(&key("delimiter"), "the delimiter must be a single byte"));
        }
        for (k, set) in [
            ("image_column", input.image_column.is_some()),
            ("audio_column", input.audio_column.is_some()),
        ] {
            if set && !format.is_table() {
                return Err(
                    source.error(&key(k), format!("{k} is for tables (jsonl, csv, parquet)"))
                );
            }
        }
        // A row may name an image and an audio file (multimodal
        // records): the image is the record's first file.
        let both = input.image_column.is_some() && input.audio_column.is_some();
        if both && input.image_column == input.audio_column {
            return Err(source.error(
                &key("audio_column"),
                "image_column and audio_column name the same column",
            ));
        }
        let file_column = input.image_column.clone().or(input.audio_column.clone());
        let also_column = both.then(|| input.audio_column.clone()).flatten();
        for (k, set) in [
            ("caption_column", input.caption_column.is_some()),
            ("label_column", input.label_column.is_some()),
        ] {
            if set && file_column.is_none() {
                return Err(
                    source.error(&key(k), format!("{k} needs image_column or audio_column"))
                );
            }
        }
        for (k, set, needs) in [
            (
                "image_root",
                input.image_root.is_some(),
                input.image_column.is_some(),
            ),
            (
                "audio_root",
                input.audio_root.is_some(),
                input.audio_column.is_some(),
            ),
        ] {
            if set && !needs {
                let column = k.replace("_root", "_column");
                return Err(source.error(&key(k), format!("{k} needs {column}")));
            }
        }
        let media = match format {
            InputFormat::Images => Some(Media::Image),
            InputFormat::Audio => Some(Media::Audio),
            InputFormat::Tar if audio_stages => Some(Media::Audio),
            InputFormat::Tar => Some(Media::Image),
            _ if input.image_column.is_some() => Some(Media::Image),
            _ if input.audio_column.is_some() => Some(Media::Audio),
            _ => None,
        };
        let also = also_column.as_ref().map(|_| Media::Audio);
        match pipeline_media {
            Some((other, other_also, j)) if (other, other_also) != (media, also) => {
                let name = |m: Option<Media>, a: Option<Media>| match a {
                    Some(_) => "image and audio",
                    None => m.map_or("text", Media::name),
                };
                return Err(source.error(
                    &key("path"),
                    format!(
                        "this input is {} and inputs[{j}] is {}: a pipeline reads one kind of input (text, images or audio)",
                        name(media, also),
                        name(other, other_also)
                    ),
                ));
            }
            Some(_) => {}
            None => pipeline_media = Some((media, also, i)),
        }
        // Table columns are read beside the reader's own ones.
        let own = |c: &Option<String>| {
            c.as_deref()
                .is_some_and(|c| sources::media::TABLE_OWN_COLUMNS.contains(&c))
        };
        if own(&input.label_column) {
            return Err(source.error(
                &key("label_column"),
                "this name is a column kiln fills itself; rename the table's column",
            ));
        }
        if own(&input.caption_column) && own(&file_column) {
            let k = match input.image_column.is_some() {
                true => "image_column",
                false => "audio_column",
            };
            return Err(source.error(
                &key(k),
                "the caption and the file path cannot both be in columns named like the ones kiln fills",
            ));
        }
        for (j, c) in input.columns.iter().enumerate() {
            if input.columns[..j].contains(c) {
                return Err(source.error(&key("columns"), format!("`{c}` is listed twice")));
            }
            let own = if media.is_some() {
                matches!(
                    c.as_str(),
                    "sample_id" | "source" | "position" | "path" | "label" | "text"
                ) || Some(c) == file_column.as_ref()
                    || Some(c) == also_column.as_ref()
                    || also.is_some_and(|m| c == m.path_column())
                    || Some(c) == input.caption_column.as_ref()
                    || Some(c) == input.label_column.as_ref()
            } else {
                matches!(c.as_str(), "sample_id" | "source" | "position" | "text")
                    || *c == input.text_field
            };
            if own {
                return Err(source.error(
                    &key("columns"),
                    format!("`{c}` is a column kiln fills itself"),
                ));
            }
            if !columns.contains(c) {
                columns.push(c.clone());
            }
        }
        let walked = format.is_media_files() && is_folder;
        let files = match (walked, media) {
            (true, Some(m)) => match walk_media(&input.path, input.allow_outside_root) {
                Ok(f) if media_files(&f, m).next().is_none() => {
                    return Err(source.error(
                        &key("path"),
                        format!(
                            "no {} files ({}) under `{}`",
                            m.name(),
                            m.extensions().join(", "),
                            input.path
                        ),
                    ));
                }
                Ok(f) => f,
                Err(e) => {
                    return Err(
                        source.error(&key("path"), format!("cannot list `{}`: {e}", input.path))
                    );
                }
            },
            _ => expand(&input.path).map_err(|m| source.error(&key("path"), m))?,
        };
        let mut spec = InputSpec::from_config(input, format);
        if let Some(media) = media {
            let labels = if format.is_media_files() {
                input.labels
            } else {
                LabelSource::None
            };
            let names = match (&input.classes, labels) {
                (Some(c), _) => c.clone(),
                (None, LabelSource::Folder) => {
                    let names = folder_classes(&files, media);
                    if media_files(&files, media).any(|f| sources::media::folder_label(f).is_none())
                    {
                        return Err(source.error(
                            &key("labels"),
                            format!("some {} files are in no folder to name their class; set labels = \"none\" or use a folder per class", media.name()),
                        ));
                    }
                    names
                }
                (None, LabelSource::None) => Vec::new(),
            };
            if !names.is_empty() {
                match &classes {
                    Some((known, j)) if *known != names => {
                        return Err(source.error(
                            &key("classes"),
                            format!("the classes {names:?} differ from those of inputs[{j}], {known:?}: one dataset has one list of class names"),
                        ));
                    }
                    Some(_) => {}
                    None => classes = Some((names, i)),
                }
            }
            has_label |= labels == LabelSource::Folder
                || format == InputFormat::Tar
                || input.label_column.is_some();
            has_caption |= format == InputFormat::Tar || input.caption_column.is_some();
            let table_dir = storage::parent(files.first().map(String::as_str).unwrap_or("."));
            let root = match input.image_root.as_ref().or(input.audio_root.as_ref()) {
                Some(r) => r.clone(),
                None if walked => input.path.clone(),
                None if format.is_media_files() => storage::glob_root(&input.path),
                None => table_dir.clone(),
            };
            spec.media = Some(MediaSpec {
                media,
                labels,
                file_column,
                root,
                allow_outside_root: input.allow_outside_root,
                caption_column: input.caption_column.clone(),
                label_column: input.label_column.clone(),
                classes: Arc::new(Vec::new()),
                also: also_column.map(|column| AlsoFile {
                    media: Media::Audio,
                    column,
                    root: input.audio_root.clone().unwrap_or(table_dir),
                }),
            });
        }
        let root = match walked {
            true => format!("{}/", input.path.trim_end_matches('/')),
            false => storage::glob_root(&input.path),
        };
        let prefix = match (&input.name, config.inputs.len()) {
            (Some(n), _) => format!("{n}/"),
            (None, 1) => String::new(),
            (None, _) => format!("{i}/"),
        };
        inputs.push(ResolvedInput {
            spec,
            files,
            root,
            prefix,
        });
    }
    let media = pipeline_media.and_then(|(m, _, _)| m);
    let also = pipeline_media.and_then(|(_, a, _)| a);
    if audio_stages && media != Some(Media::Audio) && also != Some(Media::Audio) {
        let i = audio_stage.expect("there is one");
        return Err(source.error(
            &format!("stages[{i}].type"),
            "audio stages need audio inputs (audio files, tar shards, tables with audio_column)",
        ));
    }
    let classes = classes.map(|(c, _)| c).unwrap_or_default();
    let shared = Arc::new(classes.clone());
    for input in &mut inputs {
        if let Some(m) = &mut input.spec.media {
            m.classes = shared.clone();
        }
    }
    let kind: &'static KindSchema = match media {
        Some(_) if also.is_some() => &schema::MULTIMODAL,
        Some(Media::Image) => &schema::IMAGE,
        Some(Media::Audio) => &schema::AUDIO,
        None => &schema::TEXT,
    };
    let record_schema = match media {
        Some(m) => {
            let s = media_record_schema(m, also, &columns, has_label, has_caption);
            with_class_names(&s, &classes)
        }
        None => sources::record_schema(&columns),
    };
    Ok(Inputs {
        inputs,
        media,
        also,
        classes,
        kind,
        record_schema,
    })
}

/// The schema with the class names on its `label` field.
fn with_class_names(schema: &SchemaRef, classes: &[String]) -> SchemaRef {
    if classes.is_empty() {
        return schema.clone();
    }
    let names = serde_json::to_string(classes).expect("strings serialize");
    let fields: Vec<arrow::datatypes::Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let f = f.as_ref().clone();
            if f.name() == "label" {
                f.with_metadata([(schema::CLASS_NAMES.to_string(), names.clone())].into())
            } else {
                f
            }
        })
        .collect();
    Arc::new(arrow::datatypes::Schema::new(fields))
}

/// Files a path or glob names, sorted; an error message when none.
fn expand(pattern: &str) -> std::result::Result<Vec<String>, String> {
    let is_glob = pattern.contains(['*', '?', '[']);
    if storage::is_url(pattern) {
        if !is_glob {
            return match storage::stat(pattern) {
                Ok(_) => Ok(vec![pattern.to_string()]),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(format!("no such object: `{pattern}`"))
                }
                Err(e) => Err(format!("cannot read `{pattern}`: {e}")),
            };
        }
        if !storage::can_list(pattern) {
            return Err(format!(
                "`{pattern}`: an HTTP server cannot list, so a glob cannot be expanded; name each file"
            ));
        }
        let files = storage::glob(pattern)?;
        if files.is_empty() {
            return Err(format!("`{pattern}` matches no objects"));
        }
        return Ok(files);
    }
    if !is_glob {
        let p = Path::new(pattern);
        if p.is_dir() {
            return Err(format!(
                "`{pattern}` is a directory; name its files with a glob such as `{pattern}/*.jsonl`"
            ));
        }
        if !p.exists() {
            return Err(format!("no such file: `{pattern}`"));
        }
        return Ok(vec![pattern.to_string()]);
    }
    let mut files = storage::local::glob(pattern)?;
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(format!("`{pattern}` matches no files"));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;

    fn resolve_text(text: &str) -> Result<Inputs> {
        let source = ConfigSource::pipeline("p.toml", text);
        let config = source.parse()?;
        resolve(&source, &config, None)
    }

    fn pipeline(inputs: &str) -> String {
        format!("{inputs}\n[output]\npath = \"out\"\n")
    }

    #[test]
    fn a_glob_lists_its_files_sorted_and_makes_a_text_dataset() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.jsonl", "a.jsonl", "c.txt"] {
            std::fs::write(dir.path().join(name), "{}\n").unwrap();
        }
        let glob = dir.path().join("*.jsonl");
        let got = resolve_text(&pipeline(&format!(
            "[[inputs]]\npath = \"{}\"\ncolumns = [\"lang\"]\n",
            glob.display()
        )))
        .unwrap();
        let files: Vec<&str> = got.inputs[0]
            .files
            .iter()
            .map(|f| f.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(files, ["a.jsonl", "b.jsonl"]);
        assert_eq!(got.kind.kind, "text");
        assert!(got.media.is_none());
        assert!(got.record_schema.field_with_name("lang").is_ok());
    }

    #[test]
    fn a_glob_that_matches_nothing_names_the_input() {
        let err = resolve_text(&pipeline(
            "[[inputs]]\npath = \"/nonexistent/kiln/*.jsonl\"\n",
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("inputs[0].path"), "{err}");
        assert!(err.contains("matches no files"), "{err}");
    }

    #[test]
    fn a_directory_without_a_glob_or_media_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_text(&pipeline(&format!(
            "[[inputs]]\npath = \"{}\"\nformat = \"jsonl\"\n",
            dir.path().display()
        )))
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("is a directory"), "{err}");
    }

    #[test]
    fn a_column_kiln_fills_cannot_be_listed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.jsonl");
        std::fs::write(&file, "{}\n").unwrap();
        let err = resolve_text(&pipeline(&format!(
            "[[inputs]]\npath = \"{}\"\ncolumns = [\"sample_id\"]\n",
            file.display()
        )))
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("inputs[0].columns"), "{err}");
    }

    #[test]
    fn text_and_images_in_one_pipeline_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.jsonl");
        std::fs::write(&file, "{}\n").unwrap();
        std::fs::create_dir_all(dir.path().join("img/cat")).unwrap();
        std::fs::write(dir.path().join("img/cat/x.png"), b"not really").unwrap();
        let err = resolve_text(&pipeline(&format!(
            "[[inputs]]\npath = \"{}\"\n\n[[inputs]]\npath = \"{}\"\n",
            file.display(),
            dir.path().join("img").display()
        )))
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("inputs[1].path"), "{err}");
        assert!(err.contains("one kind of input"), "{err}");
    }
}
