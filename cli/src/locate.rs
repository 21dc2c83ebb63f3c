//! Finding where a configuration key is written, to report errors by line.
//!
//! Validation names the key it rejects as a path (`listener[0].route[1].upstream`);
//! this module walks the same path through a span-preserving parse of the
//! file and returns the line of the deepest part it finds; and, the other
//! way round, names the key written at a byte offset (where a syntax or
//! type error points).

use std::fmt;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

/// A path to a key of the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(Vec<Step>);

impl KeyPath {
    pub(crate) fn root() -> Self {
        Self::default()
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        let mut steps = self.0.clone();
        steps.push(Step::Key(key.to_owned()));
        Self(steps)
    }

    pub(crate) fn index(&self, index: usize) -> Self {
        let mut steps = self.0.clone();
        steps.push(Step::Index(index));
        Self(steps)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(k) if i == 0 => write!(f, "{k}")?,
                Step::Key(k) => write!(f, ".{k}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A place in the parsed document: an item, or a table of an array of tables.
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Table(&'a toml_edit::Table),
}

impl<'a> Node<'a> {
    fn table_like(&self) -> Option<&'a dyn toml_edit::TableLike> {
        match *self {
            Node::Item(item) => item.as_table_like(),
            Node::Table(table) => Some(table),
        }
    }

    fn item(&self) -> Option<&'a toml_edit::Item> {
        match *self {
            Node::Item(item) => Some(item),
            Node::Table(_) => None,
        }
    }
}

/// The 1-based line of `path` in `source`, or of its deepest existing parent.
pub(crate) fn line_of(source: &str, path: &KeyPath) -> Option<usize> {
    let doc = toml_edit::Document::parse(source).ok()?;
    let mut node = Node::Item(doc.as_item());
    let mut offset = None;
    for step in &path.0 {
        match step {
            Step::Key(key) => {
                let Some((k, next)) = node.table_like().and_then(|t| t.get_key_value(key)) else {
                    break;
                };
                offset = k.span().map(|s| s.start).or(offset);
                node = Node::Item(next);
            }
            Step::Index(n) => {
                let Some(item) = node.item() else { break };
                if let Some(table) = item.as_array_of_tables().and_then(|a| a.get(*n)) {
                    offset = table.span().map(|s| s.start).or(offset);
                    node = Node::Table(table);
                    continue;
                }
                if let Some(value) = item.as_array().and_then(|a| a.get(*n)) {
                    offset = value.span().map(|s| s.start).or(offset);
                }
                break;
            }
        }
    }
    offset.map(|o| source[..o.min(source.len())].matches('\n').count() + 1)
}

/// The key written last at or before byte `offset` of `source`: the key
/// (or list item) a deserialisation error at `offset` is about.
pub(crate) fn key_at(source: &str, offset: usize) -> Option<KeyPath> {
    let doc = toml_edit::Document::parse(source).ok()?;
    let mut starts = Vec::new();
    collect_keys(doc.as_table(), &KeyPath::root(), &mut starts);
    starts
        .into_iter()
        .filter(|(start, _)| *start <= offset)
        .max_by_key(|(start, _)| *start)
        .map(|(_, path)| path)
}

/// Every key, table of an array of tables and array item under `table`,
/// with the offset where it is written.
fn collect_keys(table: &dyn toml_edit::TableLike, at: &KeyPath, out: &mut Vec<(usize, KeyPath)>) {
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let path = at.key(name);
        if let Some(span) = key.span() {
            out.push((span.start, path.clone()));
        }
        if let Some(tables) = item.as_array_of_tables() {
            for (i, t) in tables.iter().enumerate() {
                if let Some(span) = t.span() {
                    out.push((span.start, path.index(i)));
                }
                collect_keys(t, &path.index(i), out);
            }
        } else if let Some(values) = item.as_array() {
            for (i, v) in values.iter().enumerate() {
                if let Some(span) = v.span() {
                    out.push((span.start, path.index(i)));
                }
                if let Some(inline) = v.as_inline_table() {
                    collect_keys(inline, &path.index(i), out);
                }
            }
        } else if let Some(inner) = item.as_table_like() {
            collect_keys(inner, &path, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "[runtime]\nworkers = 2\n\n[[listener]]\nname = \"a\"\n\n[[listener]]\nname = \"b\"\n\n[[listener.route]]\nupstream = \"x\"\n\n[[upstream]]\nservers = [\n  \"1\",\n  \"2\",\n]\n";

    #[test]
    fn finds_keys_in_arrays_of_tables_and_arrays() {
        let root = KeyPath::root();
        assert_eq!(line_of(SOURCE, &root.key("runtime").key("workers")), Some(2));
        assert_eq!(
            line_of(SOURCE, &root.key("listener").index(1).key("name")),
            Some(8)
        );
        let route = root
            .key("listener")
            .index(1)
            .key("route")
            .index(0)
            .key("upstream");
        assert_eq!(route.to_string(), "listener[1].route[0].upstream");
        assert_eq!(line_of(SOURCE, &route), Some(11));
        assert_eq!(
            line_of(SOURCE, &root.key("upstream").index(0).key("servers").index(1)),
            Some(16)
        );
        // And back: the key written at an offset.
        let at = |needle: &str| key_at(SOURCE, SOURCE.find(needle).unwrap()).map(|k| k.to_string());
        assert_eq!(at("2\n\n[[listener]]").as_deref(), Some("runtime.workers"));
        assert_eq!(at("\"b\"").as_deref(), Some("listener[1].name"));
        assert_eq!(at("\"x\"").as_deref(), Some("listener[1].route[0].upstream"));
        assert_eq!(at("\"2\"").as_deref(), Some("upstream[0].servers[1]"));
        // A missing key reports its deepest parent.
        assert_eq!(
            line_of(SOURCE, &root.key("listener").index(0).key("listen")),
            Some(4)
        );
    }
}
