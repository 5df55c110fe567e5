"""Wall time of ``MeDS.fit`` with default settings on 300 training images of 256x256.

250 normal images of the synthetic "tile" category plus 50 injected defects (20 % noise,
no-overlap), all stages included (features, memory ensemble, distillation, selection).

    python benchmarks/fit_time.py
"""
import json
import time

import meds
from meds.data import generate_synthetic, load_dataset, contaminate
from meds.evaluation.metrics import image_auroc
t0 = time.time()
root = generate_synthetic('bench_out/fit300', categories=['tile'], n_train=250, n_test_good=10, n_test_defect=60, image_size=256, seed=0)
data = contaminate(load_dataset(root, category='tile', format='mvtec'), 0.2, seed=0)
print('train images', len(data.train), 'noise', data.n_noise, 'gen', round(time.time() - t0), 's', flush=True)
stages = {}


def cb(stage, step, total, loss):
    stages.setdefault(stage, [time.time(), 0])[1] = time.time()


t = time.time()
model = meds.MeDS(device='cpu').fit(data.train_paths(), callback=cb)
total = time.time() - t
out = {k: round(v[1] - v[0], 1) for k, v in stages.items()}
print(json.dumps({"fit_seconds": round(total, 1), "stage_seconds(first->last step)": out,
                  "contamination_auroc": image_auroc(data.noise_labels().astype(int), model.training_scores_)}), flush=True)
