"""The seed write-ups' own figures and settings, per recipe and compared variant, as `bench/reproduce.py` quotes them.

Each figure is taken from the write-up's text in ../shared/seeds/ (the file and a short quote say where); a figure
the write-up does not state is NONE ("none stated"), never a guess. Accuracies are fractions (91.3% -> 0.913).
Variants are listed in the order the recipe runs them (its run folders, OUT/<variant>).
"""

NONE = "none stated"
COURSE_DATA = ("the ITU course's Infected (COVID-19 + Pneumonia) vs Normal set, 12,000 train / 1,500 valid / 1,500 "
               "test images (Infected 4919/615/615, Normal 7081/885/885: table in 000_fba7748dba71d939.txt); "
               "not public")

ORIGINALS = {
    "resnet18": {
        "file": "001_836717f9f3cce3c8.txt",
        "measured_on": "the test split of " + COURSE_DATA,
        "image_size": NONE, "epochs": 10, "lr": 1e-3,
        "variants": [
            {"variant": "fc", "what": "FC only", "accuracy": 0.913, "f1": 0.926,
             "quote": "1.1.1.4: 'The final accuracy for test dataset is 91.3 % and F1 score is 0.926' "
                      "(Table 2: 91.3%, 0.93)"},
            {"variant": "layers", "what": "conv1 + layer1 + layer3 + FC", "accuracy": 0.9553, "f1": 0.96,
             "quote": "Table 2: 'Few Conv2d layers (conv1, layer1, layer3) and FC layers Fine-tune 95.53 0.96'"},
            {"variant": "all", "what": "the entire network", "accuracy": 0.9613, "f1": 0.97,
             "quote": "2.1.2.5: 'The final test accuracy for this network is 96.13% and F1 score is 0.97'"},
        ],
        "not_run": "Table 2's 'One Conv2d (feature layer 10) and FC layers 90.6% 0.92' names a VGG layer; the recipe "
                   "does not run it for ResNet18",
        "conclusion": {"text": "fine-tuning the entire network beats training the FC layers only (91.3% -> 96.13%)",
                       "better": "all", "worse": "fc",
                       "quote": "2.1.3: 'in ResNet18 entire fine-tune model gives higher accuracy which is 96.13%'"},
        "also": "000_fba7748dba71d939.txt (the same assignment) states no figures: 'the accuracy was too high' "
                "(FC only, overfitting)",
    },
    "vgg16": {
        "file": "001_836717f9f3cce3c8.txt",
        "measured_on": "the test split of " + COURSE_DATA,
        "image_size": NONE, "epochs": 10, "lr": 1e-3,
        "variants": [
            {"variant": "fc", "what": "FC only", "accuracy": 0.926, "f1": 0.94,
             "quote": "1.1.0.5: 'The final accuracy for test dataset is 92.6 % and F1 score is 0.94' "
                      "(Table 1: 92.66%)"},
            {"variant": "one_layer", "what": "features.10 + FC", "accuracy": 0.9653, "f1": 0.97,
             "quote": "Table 1: 'One Conv2d (feature layer 10) and FC layers Fine-tune 96.53% 0.97'"},
            {"variant": "few_layers", "what": "features 0, 5, 10, 12, 19, 21, 26, 28 + FC", "accuracy": 0.9553,
             "f1": 0.96, "quote": "Table 1: 'Few Conv2d layers (0, 5, 10, 12, 19, 21, 26, 28) and FC layers "
                                  "Fine-tune 95.53 0.96'"},
            {"variant": "all", "what": "the entire network", "accuracy": 0.9553, "f1": 0.96,
             "quote": "2.1.1.5: 'The final test accuracy for this network is 95.53% and F1 score is 0.96'"},
        ],
        "conclusion": {"text": "one conv layer (features.10) + FC is the best VGG16 variant (96.53%), above FC only "
                               "(92.6%)", "better": "one_layer", "worse": "fc", "best": "one_layer",
                       "quote": "2.1.3: 'it has highest accuracy (96.53%), it is higher than all fine-tune model'"},
    },
    "multilabel": {
        "file": "000_fba7748dba71d939.txt",
        "measured_on": ("the course's multi-label set (COVID-19 200/28, Pneumonia 2000/200, Normal 4000/400 "
                        "train/valid; its 629 test images are unlabelled); figures only in plots"),
        "image_size": NONE, "epochs": 10, "lr": 1e-3,
        "variants": [
            {"variant": "bce", "what": "BCE-with-logits (ResNet18 and VGG16)", "accuracy": NONE, "f1": NONE,
             "quote": "Part 02 Results: curves and confusion matrices as images only"},
            {"variant": "focal", "what": "focal loss, alpha 1, gamma 2 (ResNet18 and VGG16)", "accuracy": NONE,
             "f1": NONE, "quote": "Analysis: 'Alpha = 1 and gamme = 2 gave the best results'"},
        ],
        "conclusion": {"text": "focal loss gives better results than BCE", "better": "focal", "worse": "bce",
                       "metric": "macro_f1",
                       "quote": "Analysis: 'Focal Loss has helped models to understand more than BCELoss and we get "
                                "better results than the simple loss function'"},
    },
    "resnet50-coronahack": {
        "file": "002_c920aa57ad0f60bc.txt",
        "measured_on": ("its validation split (10% of the 58 COVID-19 + ~61 subsampled Normal CoronaHack TRAIN "
                        "images; the test split has no COVID-19), val_acc of the last epoch (a mean of per-batch "
                        "accuracies, batch size 8)"),
        "image_size": 256, "epochs": "5 frozen + 5 unfrozen", "lr": "0.01, then 0.001",
        "variants": [
            {"variant": "head-then-all", "what": "head 5 epochs on the frozen body, then all 5", "accuracy": 1.0,
             "f1": NONE, "quote": "unfrozen stage, 'Epoch [4] ... val_acc: 1.0000' (frozen stage ended at "
                                  "'val_acc: 0.9375')"},
        ],
        "conclusion": {"text": "the unfrozen stage lifts valid accuracy from 0.9375 (frozen body) to 1.0",
                       "figure": 1.0, "head_figure": 0.9375,
                       "quote": "frozen 'Epoch [4] ... val_acc: 0.9375'; unfrozen 'Epoch [0] ... val_acc: 1.0000'"},
    },
    "densenet121-3class": {
        "file": "004_3ff855b34db47877.txt",
        "measured_on": ("the test split (10%) of the Khulna COVID19/Pneumonia/Normal PA set, 1,525 images per "
                        "class, 4,575 in all, split 80/10/10"),
        "image_size": NONE + " (a 7x7 final feature map implies 224)", "epochs": "4, then 4 more", "lr": NONE,
        "variants": [
            {"variant": "feature-extraction", "what": "head only on the frozen DenseNet121, 4 epochs",
             "accuracy": 0.7723, "f1": NONE,
             "quote": "RESULTS: 'Fature Extraction after 4 epochs, the model achieved 77.23% test accuracy'"},
            {"variant": "fine-tuning", "what": "then the top of the network, 4 more epochs", "accuracy": 0.9458,
             "f1": NONE, "quote": "RESULTS: 'The evaluation metric of test accuracy is 94.58%' (validation 94.42%; "
                                  "precision/recall/F1 only as an image)"},
        ],
        "conclusion": {"text": "fine-tuning beats feature extraction (77.23% -> 94.58%)", "better": "fine-tuning",
                       "worse": "feature-extraction",
                       "quote": "RESULTS: 77.23% test accuracy after feature extraction, 94.58% after fine-tuning"},
    },
    "densenet121-siim": {
        "file": "003_7d5a97668e563938.txt",
        "measured_on": "its validation split (SIIM-FISABIO-RSNA train images, 70/20/10)",
        "image_size": 224, "epochs": "up to 20 (early stopping)", "lr": 3e-4,
        "variants": [
            {"variant": "binary", "what": "negative vs the rest, 3350 balanced images", "accuracy": "just over 0.80",
             "f1": NONE, "quote": "Results: 'a model with just over 80% accuracy on the validation data'"},
            {"variant": "4class", "what": "Negative / Typical / Indeterminate / Atypical", "accuracy": "0.60-0.62",
             "f1": NONE, "quote": "'unable to achieve a validation accuracy higher than 60-62%'"},
        ],
        "conclusion": {"text": "binary works (~80%), 4-class does not (60-62%)"},
    },
}
