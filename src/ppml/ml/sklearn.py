"""scikit-learn models in skops' format (``skops.io``): no pickle, only allowed types are rebuilt.

skops stores an estimator as a ZIP of JSON descriptions and numpy arrays; loading rebuilds only allowed types
(skops' list, and every type of the ``sklearn`` package), so a model file cannot run code when it is loaded
even with its key. Objects of other types (a custom transformer in a pipeline) must be named by the caller
(``trusted=[...]``) to be loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ppml.errors import UsageError, WrongModelError
from ppml.ml.library import ModelLibrary, Payload, json_values, qualified_name, require

__all__ = ["SklearnModels", "json_params"]

FORMAT = "skops"
ENTRY = "model.skops"


def json_params(estimator: Any) -> dict[str, Any]:
    """``estimator.get_params()`` (nested ones included) as :func:`~ppml.ml.library.json_values`."""
    return json_values(estimator.get_params().items())


class SklearnModels(ModelLibrary):
    name = "sklearn"
    modules = ("sklearn",)

    def dump(self, model: Any, *, spark: Any = None) -> Payload:
        sklearn = require("sklearn", self.extra)
        skops_io = require("skops.io", self.extra)
        skops = require("skops", self.extra)
        names = getattr(model, "feature_names_in_", None)
        details: dict[str, Any] = {"params": json_params(model)}
        classes = getattr(model, "classes_", None)
        if classes is not None:
            details["classes"] = [c.item() if hasattr(c, "item") else c for c in classes]
        return Payload({ENTRY: skops_io.dumps(model)}, FORMAT, qualified_name(model),
                       {"scikit-learn": sklearn.__version__, "skops": skops.__version__},
                       features=[str(n) for n in names] if names is not None else None, details=details)

    def restore(self, files: Mapping[str, bytes], manifest: Mapping[str, Any], *, spark: Any = None,
                trusted: Sequence[str] = ()) -> Any:
        skops_io = require("skops.io", self.extra)
        if manifest.get("format") != FORMAT or ENTRY not in files:
            raise WrongModelError(f"a scikit-learn model in format {manifest.get('format')!r} cannot be loaded",
                                  hint=f"this ppml reads scikit-learn models in {FORMAT} format")
        data = files[ENTRY]
        found = skops_io.get_untrusted_types(data=data)
        # skops leaves some of scikit-learn's own types to the caller (sklearn.tree._tree.Tree); ppml trusts
        # scikit-learn's package, and nothing outside it unless named.
        untrusted = [t for t in found if t not in trusted and not t.startswith("sklearn.")]
        if untrusted:
            raise UsageError(f"the model holds types outside scikit-learn's that are not trusted: {untrusted}",
                             hint="if you trust them, pass trusted=[...] (--trust NAME) naming each")
        return skops_io.loads(data, trusted=found or None)
