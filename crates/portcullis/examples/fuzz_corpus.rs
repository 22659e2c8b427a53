//! Writes the fuzz targets' starting corpora (`portcullis::fuzzing::corpus`) under the directory
//! it is given, one directory per target: `scripts/fuzz` runs it before fuzzing.
//!   cargo run -p portcullis --features fuzzing --example fuzz_corpus -- fuzz/corpus

fn main() -> std::io::Result<()> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for input in portcullis::fuzzing::corpus(&root)? {
        let dir = out.join(input.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&input.name), &input.data)?;
    }
    Ok(())
}
