// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Integration tests live in tests/tests/.
