//! A model's float parameters by their path (`attention.query.weight`, as
//! in `model.safetensors`): read out to the host, and written back into a
//! model of the same structure (pruning rebuilds a narrower model this
//! way; an int8 model's float parts are loaded this way).

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Every float parameter of `model`, by path, in the model's order.
pub fn named<B: Backend, M: Module<B>>(model: &M) -> Vec<(String, TensorData)> {
    struct V {
        path: Vec<String>,
        out: Vec<(String, TensorData)>,
    }
    impl<B: Backend> ModuleVisitor<B> for V {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let data = p.val().into_data().convert::<f32>();
            self.out.push((self.path.join("."), data));
        }
    }
    let mut v = V {
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out
}

/// `model` with each float parameter named in `values` replaced by that
/// value (shapes must match; a parameter that required a gradient still
/// does). Returns the paths of `values` the model has no parameter for.
pub fn replaced<B: Backend, M: Module<B>>(
    model: M,
    values: &BTreeMap<String, TensorData>,
) -> (M, Vec<String>) {
    struct R<'a> {
        path: Vec<String>,
        values: &'a BTreeMap<String, TensorData>,
        used: Vec<String>,
    }
    impl<B: Backend> ModuleMapper<B> for R<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, t, mapper) = p.consume();
            let path = self.path.join(".");
            let Some(v) = self.values.get(&path) else {
                return Param::from_mapped_value(id, t, mapper);
            };
            assert_eq!(
                v.shape.as_slice(),
                t.dims().as_slice(),
                "{path}: a value of another shape"
            );
            self.used.push(path);
            let grad = t.is_require_grad();
            let n = Tensor::<B, D>::from_data(v.clone().convert_dtype(t.dtype()), &t.device());
            let n = if grad { n.require_grad() } else { n };
            Param::from_mapped_value(id, n, mapper)
        }
    }
    let mut r = R {
        path: Vec::new(),
        values,
        used: Vec::new(),
    };
    let model = model.map(&mut r);
    let unused = values
        .keys()
        .filter(|k| !r.used.contains(k))
        .cloned()
        .collect();
    (model, unused)
}
