"""The state the explorers share: store, split, α, ν, current image and calibrated methods.

One :class:`Workspace` per viewer. The calibration dock publishes a
calibration into it (:meth:`Workspace.publish`); every explorer listens to its
psygnal signals and redraws. α and ν are shared, so the RW-CP set, the CRC set
and the Consema set shown side by side are always at the same α, and CONSIGN
and the pixel-wise sets at the same (α, ν).

Methods other than the published one are calibrated on demand on the *same*
calibration images (:meth:`Workspace.iter_companion`), so comparisons are
paired.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

from psygnal import Signal

from napari_conformal.core.calibration import Calibration
from napari_conformal.core.progress import Step
from napari_conformal.core.validation import check_level
from napari_conformal.errors import ConformalError
from napari_conformal.explore.session import MethodSession

__all__ = ["Workspace"]


class Workspace:
    """Shared explorer state (Qt-free).

    Signals
    -------
    alpha_changed(float), nu_changed(float)
        The shared risk level α and label-wise accuracy ν moved.
    image_changed(int)
        The current image (a store index) changed.
    session_added(str)
        A method session was added, replaced or updated (e.g. CONSIGN curves
        for a new α arrived); its name.
    reset()
        A new store or split was published; every session was dropped.
    calibrating(str)
        A calibration started (a message for the views, e.g. "calibrating CONSIGN on 40 images…") or
        ended (an empty message).
    toggle_companions()
        The user asked to show or hide the companion methods (a keyboard shortcut).
    """

    alpha_changed = Signal(float)
    nu_changed = Signal(float)
    image_changed = Signal(int)
    session_added = Signal(str)
    reset = Signal()
    calibrating = Signal(str)
    toggle_companions = Signal()

    def __init__(self) -> None:
        self.store: Any = None
        self.store_identity: str | None = None
        self.cal_indices: list[int] = []
        self.test_indices: list[int] = []
        self.sessions: dict[str, MethodSession] = {}
        self.primary: str | None = None
        #: options of companion methods, e.g. ``{"rwcp": {"features": "multiscale"}}``
        self.companion_params: dict[str, dict[str, Any]] = {}
        self._alpha = 0.1
        self._nu = 0.9
        self._index: int | None = None

    # -- shared levels ------------------------------------------------------------------------

    @property
    def alpha(self) -> float:
        """Shared risk level α in (0, 1)."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        v = check_level(value, "alpha")
        if v != self._alpha:
            self._alpha = v
            self.alpha_changed.emit(v)

    @property
    def nu(self) -> float:
        """Shared label-wise accuracy ν in [0, 1) (CONSIGN and pixel-wise methods)."""
        return self._nu

    @nu.setter
    def nu(self, value: float) -> None:
        v = check_level(value, "nu", closed_low=True)
        if v != self._nu:
            self._nu = v
            self.nu_changed.emit(v)

    @property
    def index(self) -> int | None:
        """Current image (store index), None before anything is published."""
        return self._index

    @index.setter
    def index(self, value: int) -> None:
        if self.store is None:
            raise ConformalError("no store yet: run a calibration first")
        i = int(value)
        if not 0 <= i < self.store.n_images:
            raise ConformalError(f"image index {i} is out of range 0..{self.store.n_images - 1}")
        if i != self._index:
            self._index = i
            self.image_changed.emit(i)

    # -- sessions -----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether a store and a split have been published."""
        return self.store is not None

    def session(self, name: str) -> MethodSession | None:
        """The session of method ``name``, or None."""
        return self.sessions.get(name)

    def _same_data(self, identity: Any, cal: Sequence[int]) -> bool:
        # the record carries the store's content identity: no need to hash the store again
        return self.store is not None and identity == self.store_identity and sorted(cal) == sorted(self.cal_indices)

    def publish(
        self, store: Any, calibration: Calibration, test_indices: Sequence[int] | None = None
    ) -> MethodSession:
        """Make ``calibration`` the primary session (the calibration dock calls this).

        A different store or calibration split drops every other session (they would not be
        paired any more). α and ν take the calibration's values; the current image becomes the
        first test image unless it already is a test image.

        Parameters
        ----------
        store : DatasetStore or ArrayDataset
            The data calibrated on.
        calibration : Calibration
            From :func:`napari_conformal.api.calibrate` or :meth:`Calibration.load`.
        test_indices : sequence of int, optional
            Default: every image not used for calibration.
        """
        cal = [int(i) for i in calibration.images]  # λ̂ and tuning images (RW-CP with tune="dice")
        if test_indices is None:
            cal_set = set(cal)
            test = [i for i in range(store.n_images) if i not in cal_set]
        else:
            test = [int(i) for i in test_indices]
        identity = calibration.store.identity
        is_new = not self._same_data(identity, cal)
        if is_new:
            self.sessions = {}
            self.store_identity = identity
            self.cal_indices = cal
        elif store is not self.store:  # the same data opened again (e.g. moved): read from the new object
            for other in self.sessions.values():
                other.store = store
        self.store = store
        self.test_indices = test
        session = MethodSession(calibration, store)
        self.sessions[session.name] = session
        self.primary = session.name
        if session.method.uses_features:  # a later companion of the same method uses the same settings
            self.companion_params[session.name] = dict(calibration.params)
        # set everything first, then tell the listeners (they read a consistent state)
        old = (self._alpha, self._nu, self._index)
        self._alpha = check_level(calibration.alpha, "alpha")
        if calibration.nu is not None:
            self._nu = check_level(calibration.nu, "nu", closed_low=True)
        if test and self._index not in test:
            self._index = test[0]
        elif self._index is None or not 0 <= self._index < store.n_images:
            self._index = cal[0] if cal else 0
        if is_new:
            self.reset.emit()
        if self._alpha != old[0]:
            self.alpha_changed.emit(self._alpha)
        if self._nu != old[1]:
            self.nu_changed.emit(self._nu)
        if self._index != old[2]:
            self.image_changed.emit(self._index)
        self.session_added.emit(session.name)
        return session

    def add_session(self, calibration: Calibration) -> MethodSession:
        """Add a companion calibrated on this workspace's store and split."""
        if self.store is None:
            raise ConformalError("no store yet: run a calibration first")
        if sorted(int(i) for i in calibration.images) != sorted(self.cal_indices):
            raise ConformalError("a companion method must be calibrated on the workspace's calibration images")
        session = MethodSession(calibration, self.store)
        self.sessions[session.name] = session
        self.session_added.emit(session.name)
        return session

    def companion_settings(self, name: str) -> dict[str, Any]:
        """Arguments a companion of method ``name`` is calibrated with.

        α and ν are the workspace's; the device is the primary session's; options come from
        :attr:`companion_params`.
        """
        from napari_conformal.core.methods.base import method_class

        cls = method_class(name)
        primary = self.sessions.get(self.primary or "")
        device = None if primary is None else primary.calibration.provenance.device
        return {
            "alpha": self.alpha,
            "nu": self.nu if cls.uses_nu else None,
            "device": device,
            **self.companion_params.get(name, {}),
        }

    def iter_companion(self, name: str) -> Generator[Step, None, Calibration]:
        """Calibrate method ``name`` on the workspace's calibration images (a progress generator).

        Run it in a worker; add the returned calibration with :meth:`add_session` on the thread that
        owns the workspace.
        """
        from napari_conformal.api import iter_calibrate

        if self.store is None:
            raise ConformalError("no store yet: run a calibration first")
        settings = self.companion_settings(name)
        return (yield from iter_calibrate(self.store, name, cal_indices=list(self.cal_indices), **settings))

    def session_updated(self, name: str) -> None:
        """Tell the views that session ``name`` can answer more levels now (new curves)."""
        if name in self.sessions:
            self.session_added.emit(name)

    def lambda_hat(self, name: str) -> float:
        """λ̂ of session ``name`` at the current α, ν (raises ConformalError)."""
        session = self.sessions.get(name)
        if session is None:
            raise ConformalError(f"method {name!r} has not been calibrated in this workspace")
        return session.lambda_hat(self.alpha, self.nu)
