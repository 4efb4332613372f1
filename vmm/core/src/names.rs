// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Choices users name: the enums whose values appear on the command line, in config files and
//! in reports (`--backing shmem`, `--policy mlock-drain`, ...). [`named_enum!`] defines each
//! one with its names and descriptions in one place; the command-line crates turn a [`Named`]
//! type into an argument parser, so this library needs no argument parser of its own.

/// An enum whose values users name.
pub trait Named: Copy + Sized + Send + Sync + 'static {
    /// Every value, in the order help texts list them.
    const VALUES: &'static [Self];

    /// The name users write and reports print (kebab-case).
    fn name(self) -> &'static str;

    /// What the value means: the lines of its doc comment.
    fn doc(self) -> &'static [&'static str];

    /// The description on one line (the doc comment's lines joined).
    fn help(self) -> String {
        let lines: Vec<&str> = self.doc().iter().map(|l| l.trim()).collect();
        lines.join(" ")
    }

    /// The value called `name`, if there is one.
    fn from_name(name: &str) -> Option<Self> {
        Self::VALUES.iter().copied().find(|v| v.name() == name)
    }
}

/// Defines an enum of named values: `Variant = "name",` after each variant's doc comment (the
/// doc comment is its description). Adds `ALL`, `name()`, [`Named`], `Display` and a
/// `Serialize` that writes the name.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[doc = $doc:literal])+ $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl $name {
            /// Every value, in the order help texts list them.
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant),+];

            /// The name users write and reports print.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl $crate::names::Named for $name {
            const VALUES: &'static [Self] = &$name::ALL;

            fn name(self) -> &'static str {
                $name::name(self)
            }

            fn doc(self) -> &'static [&'static str] {
                match self {
                    $($name::$variant => &[$($doc),+],)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
    };
}

pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    use super::*;

    named_enum! {
        /// A test enum.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Colour {
            /// Red, the first
            /// colour.
            Red = "red",
            /// Light blue.
            LightBlue = "light-blue",
        }
    }

    #[test]
    fn names_docs_and_serialization_agree() {
        assert_eq!(Colour::ALL, [Colour::Red, Colour::LightBlue]);
        assert_eq!(Colour::LightBlue.to_string(), "light-blue");
        assert_eq!(Colour::from_name("red"), Some(Colour::Red));
        assert_eq!(Colour::from_name("blue"), None);
        assert_eq!(Colour::Red.help(), "Red, the first colour.");
        assert_eq!(
            serde_json::to_string(&Colour::LightBlue).unwrap(),
            "\"light-blue\""
        );
    }
}
