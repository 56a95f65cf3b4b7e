//! The fuzz corpora (`fuzz/corpus/TARGET/`, kept minimal by `scripts/fuzz.sh`)
//! replayed through `kiln::fuzz`'s targets, with the inputs of every crash
//! found (`fuzz/regressions/TARGET/`, each named after what it pins): every
//! input a long fuzz run found new paths with stays handled.

use std::path::Path;

macro_rules! replay {
    ($($target:ident),*) => {
        $(
            #[test]
            fn $target() {
                let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
                let dir = fuzz.join("corpus").join(stringify!($target));
                let n = kiln::fuzz::replay(kiln::fuzz::$target, &dir);
                assert!(n > 0, "no corpus in {}", dir.display());
                let found = fuzz.join("regressions").join(stringify!($target));
                kiln::fuzz::replay(kiln::fuzz::$target, &found);
            }
        )*

        #[test]
        fn every_target_is_replayed() {
            let names: Vec<&str> = kiln::fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, [$(stringify!($target)),*]);
        }
    };
}

replay!(
    image, audio, tar, jsonl, csv, parquet, pipeline, translate, loader
);
