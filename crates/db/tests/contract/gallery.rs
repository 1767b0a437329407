//! The contract's gallery part: paging newest first, prompt search,
//! keywords over prompt and model, model filter, and deleting images.

use super::*;

pub async fn gallery_pagination_search_and_delete(db: &dyn Database) {
    let mut all = Vec::new();
    for (i, model) in ["m1", "m2", "m1"].iter().enumerate() {
        all.extend(complete(db, &format!("Neon city {i} at 100%_off"), model).await);
    }
    all.extend(complete(db, "a quiet lake", "m2").await);
    let q = |page, per_page, model: Option<&str>, search: Option<&str>| GalleryQuery {
        page,
        per_page,
        model: model.map(str::to_owned),
        search: search.map(str::to_owned),
        keywords: Vec::new(),
        favorites_only: false,
    };

    let p1 = db.list_images(&q(1, 3, None, None)).await.unwrap();
    assert_eq!(p1.total, 8);
    assert_eq!(p1.images.len(), 3);
    let p3 = db.list_images(&q(3, 3, None, None)).await.unwrap();
    assert_eq!(p3.images.len(), 2);
    let mut paged = Vec::new();
    for page in 1..=3 {
        paged.extend(
            db.list_images(&q(page, 3, None, None))
                .await
                .unwrap()
                .images,
        );
    }
    let newest_first: Vec<_> = all.iter().rev().map(|i| i.id).collect();
    assert_eq!(paged.iter().map(|i| i.id).collect::<Vec<_>>(), newest_first);
    assert!(db
        .list_images(&q(9, 3, None, None))
        .await
        .unwrap()
        .images
        .is_empty());

    let neon = db
        .list_images(&q(1, 50, None, Some("neon CITY")))
        .await
        .unwrap();
    assert_eq!(neon.total, 6, "search is case-insensitive");
    let literal = db
        .list_images(&q(1, 50, None, Some("100%_")))
        .await
        .unwrap();
    assert_eq!(literal.total, 6, "% and _ are literal");
    let none = db.list_images(&q(1, 50, None, Some("1%0"))).await.unwrap();
    assert_eq!(none.total, 0, "a % in the search is not a wildcard");
    let m2 = db.list_images(&q(1, 50, Some("m2"), None)).await.unwrap();
    assert_eq!(m2.total, 4);
    let both = db
        .list_images(&q(1, 50, Some("m2"), Some("lake")))
        .await
        .unwrap();
    assert_eq!(both.total, 2);
    // Keywords: each word in the prompt or the model key, all of them.
    let words = |words: &[&str]| GalleryQuery {
        page: 1,
        per_page: 50,
        keywords: words.iter().map(|w| w.to_string()).collect(),
        ..Default::default()
    };
    let total = |page: GalleryPage| page.total;
    assert_eq!(
        total(db.list_images(&words(&["CITY", "neon"])).await.unwrap()),
        6
    );
    assert_eq!(
        total(db.list_images(&words(&["neon", "m2"])).await.unwrap()),
        2,
        "prompt and model"
    );
    assert_eq!(
        total(db.list_images(&words(&["neon", "lake"])).await.unwrap()),
        0,
        "all words"
    );
    assert_eq!(
        total(db.list_images(&words(&["100%_"])).await.unwrap()),
        6,
        "literal"
    );
    let page = db
        .list_images(&GalleryQuery {
            per_page: 1,
            page: 2,
            ..words(&["quiet"])
        })
        .await
        .unwrap();
    assert_eq!(
        (page.total, page.images.len()),
        (2, 1),
        "paged like the rest"
    );

    let mut ids = db.all_image_ids().await.unwrap();
    ids.sort();
    let mut expected: Vec<_> = all.iter().map(|i| i.id).collect();
    expected.sort();
    assert_eq!(ids, expected);

    let victim = all[0].id;
    assert_eq!(db.get_image(victim).await.unwrap().unwrap(), all[0]);
    assert!(db.delete_image(victim).await.unwrap());
    assert!(!db.delete_image(victim).await.unwrap());
    assert_eq!(db.get_image(victim).await.unwrap(), None);
    assert_eq!(db.list_images(&q(1, 3, None, None)).await.unwrap().total, 7);
}

pub async fn favorites_filter_the_gallery(db: &dyn Database) {
    let images = complete(db, "a fox", "m").await;
    let fav = GalleryQuery {
        page: 1,
        per_page: 10,
        favorites_only: true,
        ..Default::default()
    };
    assert_eq!(db.list_images(&fav).await.unwrap().total, 0);
    assert!(db.set_favorite(images[1].id, true).await.unwrap());
    let page = db.list_images(&fav).await.unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.images[0].id, images[1].id);
    assert!(page.images[0].favorite);
    assert!(!db.get_image(images[0].id).await.unwrap().unwrap().favorite);
    assert!(db.set_favorite(images[1].id, false).await.unwrap());
    assert_eq!(db.list_images(&fav).await.unwrap().total, 0);
    assert!(!db.set_favorite(ImageId::new(), true).await.unwrap());
    // A favourite can still be deleted.
    assert!(db.set_favorite(images[0].id, true).await.unwrap());
    assert!(db.delete_image(images[0].id).await.unwrap());
    assert_eq!(db.list_images(&fav).await.unwrap().total, 0);
}
