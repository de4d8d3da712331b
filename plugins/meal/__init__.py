"""MEAL — Multi-model Ensemble via Adversarial Learning (Shen, He & Xue, AAAI 2019), with MEAL-V2's teacher averaging.

Pretrained teachers from the zoo, of any architecture (a self-ensemble teacher counts by its combined output), are
distilled into one student through block-wise similarity losses and one adversarial discriminator per tap. Guide:
README.md here. What lives here:

- ``distiller.py``: :class:`MealDistiller` (``distiller.name: meal``): teacher selection, similarity, adversarial modes;
- ``taps.py``: stage taps through timm ``feature_info`` and forward hooks, and the adaptive-pooling alignment;
- ``teachers.py``: loading and checking teachers; :class:`TeacherEnsemble`, the teachers' averaged ensemble;
- ``discriminator.py``: the d → d/2 → d/4 → 2 discriminator and gradient reversal.

MEAL trains any student model (e.g. ``deep-ensemble-<timm name>`` with ``num_members: 1`` for one timm network), so it
registers a distiller and no model.
"""
from selfens_core.hookspecs import hookimpl


@hookimpl
def register_distillers(register):
    from .distiller import MealDistiller

    register("meal", MealDistiller)
