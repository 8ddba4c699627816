//! kiln's native recipe format: a [`Recipe`] written as RON (`kiln.ron`).
//!
//! [`to_ron`] prints a recipe in a stable, pretty layout (fields in declaration order, maps
//! sorted, four-space indentation); [`from_ron`] reads it back, and a syntax or shape error points
//! at its line and column.

use std::sync::Arc;

use miette::{NamedSource, SourceSpan};

use super::diagnostics::LoadError;
use super::model::Recipe;

/// The recipe as pretty RON; reading it back with [`from_ron`] gives an equal recipe.
pub fn to_ron(recipe: &Recipe) -> String {
    let config = ron::ser::PrettyConfig::new()
        .indentor("    ")
        .new_line("\n")
        .struct_names(false)
        .separate_tuple_members(false)
        .enumerate_arrays(false);
    match ron::ser::to_string_pretty(recipe, config) {
        Ok(mut text) => {
            text.push('\n');
            text
        }
        // Only a path that is not UTF-8 can fail, and the loaders refuse those.
        Err(error) => format!("/* The recipe cannot be written as RON: {error} */\n"),
    }
}

/// Reads a recipe written as RON; `name` names the source in reports (such as `kiln.ron`).
pub fn from_ron(text: &str, name: &str) -> Result<Recipe, LoadError> {
    ron::Options::default()
        .from_str::<Recipe>(text)
        .map_err(|error| {
            let start = offset_of(text, error.span.start.line, error.span.start.col);
            let end = offset_of(text, error.span.end.line, error.span.end.col).max(start);
            let len = (end - start).max(usize::from(start < text.len()));
            LoadError::Ron {
                name: name.to_string(),
                message: error.code.to_string(),
                src: NamedSource::new(name, Arc::new(text.to_string())),
                span: SourceSpan::new(start.into(), len),
            }
        })
}

/// The byte offset of a 1-based line and column (in characters).
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (index, piece) in text.split_inclusive('\n').enumerate() {
        if index + 1 == line {
            return offset
                + piece
                    .char_indices()
                    .nth(column.saturating_sub(1))
                    .map_or(piece.len(), |(i, _)| i);
        }
        offset += piece.len();
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        let text = "ab\ncdé\nf";
        assert_eq!(offset_of(text, 1, 1), 0);
        assert_eq!(offset_of(text, 2, 3), 5);
        assert_eq!(offset_of(text, 3, 1), 8);
        assert_eq!(offset_of(text, 9, 1), text.len());
    }

    #[test]
    fn default_recipe_round_trips() {
        let recipe = Recipe::default();
        assert_eq!(
            from_ron(&to_ron(&recipe), "kiln.ron").expect("parses"),
            recipe
        );
    }

    #[test]
    fn errors_point_at_the_line() {
        let error = from_ron(
            "(\n    distribution: (\n        distribution: gentoo,\n    ),\n)\n",
            "kiln.ron",
        )
        .expect_err("gentoo is not a distribution");
        match error {
            LoadError::Ron { span, .. } => assert!(span.offset() > 20, "{span:?}"),
            other => panic!("unexpected error {other:?}"),
        }
    }
}
