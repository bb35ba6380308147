//! Each wrong use of a method that the compiler must refuse, with the
//! message it gives (tests/ui/*.stderr): a hand-written `Method`, a
//! registry of the wrong side, a call in the wrong direction, raw bytes
//! through the public registry API.

#[test]
fn wrong_uses_of_methods_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
